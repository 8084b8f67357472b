"""MAIL/RCPT arguments and ESMTP parameters (RFC 5321 §4.1.1.2-3, 1870, 6152, 6531, 4954, 3461)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smarthost.smtp.commands import (
    CommandError,
    MailParams,
    RcptParams,
    parse_mail,
    parse_rcpt,
    split_command,
    xtext_decode,
    xtext_encode,
)


def mail_error(argument: str, **kw) -> str:
    with pytest.raises(CommandError) as info:
        parse_mail(argument, **kw)
    reply = info.value.reply
    return f"{reply.code} {reply.enhanced} {reply.text}"


def rcpt_error(argument: str, **kw) -> str:
    with pytest.raises(CommandError) as info:
        parse_rcpt(argument, **kw)
    reply = info.value.reply
    return f"{reply.code} {reply.enhanced} {reply.text}"


def test_split_command():
    assert split_command("mail FROM:<a@b>") == ("MAIL", "FROM:<a@b>")
    assert split_command("QUIT") == ("QUIT", "")
    assert split_command("ehlo   client.example  ") == ("EHLO", "client.example")


def test_mail_plain():
    address, params = parse_mail("FROM:<a@b.example>")
    assert str(address) == "a@b.example"
    assert params == MailParams()


@pytest.mark.parametrize("argument", ["from:<a@b.example>", "FROM: <a@b.example>", "From:  <a@b.example>"])
def test_mail_prefix_tolerance(argument):
    # Case-insensitive keyword; Postfix tolerates spaces after the colon.
    assert str(parse_mail(argument)[0]) == "a@b.example"


def test_mail_null_sender():
    address, _ = parse_mail("FROM:<>")
    assert address.is_null


def test_mail_all_parameters():
    address, params = parse_mail(
        "FROM:<a@b.example> size=1000 BODY=8bitmime SMTPUTF8 AUTH=user+2Bx@b.example RET=hdrs ENVID=QQ+3D1"
    )
    assert params == MailParams(
        size=1000, body="8BITMIME", smtputf8=True, auth="user+x@b.example", ret="HDRS", envid="QQ=1"
    )


def test_mail_auth_null():
    # RFC 4954 §5: AUTH=<> means the submitter is not known.
    assert parse_mail("FROM:<a@b.example> AUTH=<>")[1].auth == "<>"


def test_mail_size_limit():
    assert parse_mail("FROM:<a@b.example> SIZE=100", max_size=100)[1].size == 100
    assert mail_error("FROM:<a@b.example> SIZE=101", max_size=100) == "552 5.3.4 Message size exceeds fixed limit"
    assert parse_mail("FROM:<a@b.example> SIZE=99999999999", max_size=0)[1].size == 99999999999


@pytest.mark.parametrize(
    ("argument", "error"),
    [
        ("FROM:<a@b.example> FOO=1", "555 5.5.4 Unsupported option: FOO"),
        ("FROM:<a@b.example> NOTIFY=NEVER", "555 5.5.4 Unsupported option: NOTIFY"),
        ("FROM:<a@b.example> SIZE=abc", "501 5.5.4 Bad SIZE parameter value"),
        ("FROM:<a@b.example> SIZE", "501 5.5.4 Bad SIZE parameter value"),
        ("FROM:<a@b.example> SIZE=" + "9" * 21, "501 5.5.4 Bad SIZE parameter value"),
        ("FROM:<a@b.example> BODY=BINARYMIME", "501 5.5.4 Bad BODY parameter value"),
        ("FROM:<a@b.example> SMTPUTF8=yes", "501 5.5.4 Bad SMTPUTF8 parameter value"),
        ("FROM:<a@b.example> RET=ALL", "501 5.5.4 Bad RET parameter value"),
        ("FROM:<a@b.example> ENVID=a+zz", "501 5.5.4 Bad ENVID parameter value"),
        ("FROM:<a@b.example> ENVID=" + "x" * 101, "501 5.5.4 Bad ENVID parameter value"),
        ("FROM:<a@b.example> AUTH", "501 5.5.4 Bad AUTH parameter value"),
        ("FROM:<a@b.example> SIZE=1 SIZE=2", "501 5.5.4 Duplicate parameter: SIZE"),
        ("FROM:<a@b.example> =1", "501 5.5.4 Bad parameter syntax"),
        ("FROM:<a@b.example> SIZE==1", "501 5.5.4 Bad parameter syntax"),
        ("FROM:<a@b.example>SIZE=1", "501 5.5.4 Syntax: parameters must follow the address after a space"),
        ("FROM:a@b.example", "501 5.1.7 Bad sender address syntax"),
        ("FROM:<a@b..example>", "501 5.1.7 Bad sender address syntax"),
        ("FROM:<a@b.example", "501 5.1.7 Bad sender address syntax"),
        ("TO:<a@b.example>", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        ("", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        ("FROM:<jörg@b.example>", "553 5.6.7 Error: non-ASCII address requires SMTPUTF8"),
    ],
)
def test_mail_errors(argument, error):
    assert mail_error(argument) == error


def test_mail_utf8_with_smtputf8():
    address, params = parse_mail("FROM:<jörg@bücher.example> SMTPUTF8")
    assert (address.local, address.domain, params.smtputf8) == ("jörg", "bücher.example", True)


def test_rcpt_plain_and_postmaster():
    address, params = parse_rcpt("TO:<c@d.example>")
    assert (str(address), params) == ("c@d.example", RcptParams())
    assert str(parse_rcpt("to:<postmaster>")[0]) == "postmaster"


def test_rcpt_dsn_parameters():
    _, params = parse_rcpt("TO:<c@d.example> NOTIFY=success,delay ORCPT=rfc822;c+40d.example")
    assert params == RcptParams(notify=("SUCCESS", "DELAY"), orcpt="rfc822;c@d.example")
    assert parse_rcpt("TO:<c@d.example> NOTIFY=NEVER")[1].notify == ("NEVER",)


@pytest.mark.parametrize(
    ("argument", "error"),
    [
        ("TO:<c@d.example> SIZE=1", "555 5.5.4 Unsupported option: SIZE"),
        ("TO:<c@d.example> NOTIFY=NEVER,FAILURE", "501 5.5.4 Bad NOTIFY parameter value"),
        ("TO:<c@d.example> NOTIFY=SUCCESS,SUCCESS", "501 5.5.4 Bad NOTIFY parameter value"),
        ("TO:<c@d.example> NOTIFY=", "501 5.5.4 Bad parameter syntax"),
        ("TO:<c@d.example> ORCPT=c@d.example", "501 5.5.4 Bad ORCPT parameter value"),
        ("TO:<c@d.example> ORCPT=rfc822;" + "x" * 500, "501 5.5.4 Bad ORCPT parameter value"),
        ("TO:<>", "501 5.1.3 Bad recipient address syntax"),
        ("TO:c@d.example", "501 5.1.3 Bad recipient address syntax"),
        ("FROM:<c@d.example>", "501 5.5.4 Syntax: RCPT TO:<address>"),
        ("TO:<jörg@d.example>", "553 5.6.7 Error: non-ASCII address requires SMTPUTF8"),
    ],
)
def test_rcpt_errors(argument, error):
    assert rcpt_error(argument) == error


def test_rcpt_utf8_follows_the_mail_smtputf8_parameter():
    assert parse_rcpt("TO:<jörg@d.example>", smtputf8=True)[0].local == "jörg"


def test_xtext():
    assert xtext_decode("a+2Bb+3Dc") == "a+b=c"
    assert xtext_encode("a+b=c é") == "a+2Bb+3Dc+20+C3+A9"
    for bad in ("a+2b", "a+2", "a=b", "a b"):
        with pytest.raises(ValueError):
            xtext_decode(bad)


@given(st.text(max_size=40))
def test_xtext_round_trip(text):
    assert xtext_decode(xtext_encode(text)) == text


@given(st.text(max_size=120))
def test_arbitrary_arguments_parse_or_raise_command_error(text):
    for parse in (parse_mail, parse_rcpt):
        try:
            parse(text)
        except CommandError as exc:
            assert exc.reply.code in (501, 552, 553, 555)
