/*
 * Load client for authenticated submission; bench/auth.py compiles it into its work directory
 * and runs it as its own process:
 *
 *     cc -O2 -Wall -o WORKDIR/authload bench/authload.c -lssl -lcrypto
 *
 * smtp-source cannot authenticate, and a Python client costs about as much CPU per message as
 * the server it measures, so this is a small C client on OpenSSL. It is single-threaded and
 * event-driven, like smtp-source, wrk or h2load: one process, one thread, non-blocking sockets,
 * one epoll set, non-blocking OpenSSL, and one state machine per connection (struct conn,
 * enum phase). A thread per client would make every reply from the server wake a blocked
 * thread, often on the other core; on a 2-core machine those wake-ups cost the server and the
 * client more than the work itself (see bench/README.md). --clients connections are open at
 * once; each repeats a session until the run's messages are used up:
 *
 *     connect, 220, EHLO, STARTTLS (RFC 3207), TLS handshake verifying the server's certificate
 *     against --cafile with the host name --server-name (also sent as SNI), EHLO again,
 *     AUTH PLAIN with an initial response (RFC 4954, RFC 4616), 235,
 *     then --per-conn messages: MAIL FROM, RCPT TO and DATA in one write (PIPELINING,
 *     RFC 2920), 250 250 354, the message and "." in one write, 250; then QUIT, 221, our
 *     close_notify and the server's (as the Python client did), close.
 *
 * No TLS session resumption: tickets are off, the session cache is off and no session is ever
 * reused, so every connection makes a full handshake.
 *
 * Measured: per message the time from when the client started on it until its 250 (for the
 * first message of a session from just before connect(): connecting, TLS and AUTH included),
 * per message the transaction (MAIL FROM written until the final 250), per session the set-up
 * (connect until 235), the run's wall time and the process's own CPU time (getrusage
 * RUSAGE_SELF, user + system).
 *
 * Each step of a session (connecting, one command and its reply, the TLS handshake, the TLS
 * close) has REPLY_TIMEOUT_S from when it starts: a deadline per connection, kept in a list in
 * deadline order (every deadline is "now + the same timeout", so appending keeps it sorted),
 * whose head is epoll_wait's timeout.
 *
 * Options: --host --port --clients --messages --per-conn --size --cafile --server-name
 * --sender --recipient --users FILE (lines "login<TAB>password"; a file, so that passwords
 * are not on the command line) and --warmup (each user opens a session once, one after
 * another, and QUITs; nothing is sent).
 * Output: one JSON object on stdout, the same keys as the Python client had:
 *   ok, error_count, errors (the first 5 texts), wall_s, msgs_per_s, client_cpu_s, sessions,
 *   tls ("TLSv1.3 TLS_AES_256_GCM_SHA384"), latency_ms / transaction_ms / setup_ms with
 *   p50 (median), p99 (nearest rank) and max;
 * with --warmup only error_count and errors.
 * Exit status 0 even when sessions failed (the caller reads error_count), 2 for bad options or
 * unusable input (message on stderr).
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#ifndef REPLY_TIMEOUT_S
#define REPLY_TIMEOUT_S 60       /* seconds per step of a session (-D to test with less) */
#endif
#define MAX_LINE 4096            /* one reply line, CRLF included; longer is an error */
#define MAX_REPLY_LINES 100      /* lines of one multi-line reply */
#define READ_BUF 16384           /* per connection; larger than MAX_LINE */
#define ERROR_TEXT_MAX 1024
#define REPLY_TEXT (ERROR_TEXT_MAX - 64)  /* a reply's lines, for an error text */
#define MAX_ERRORS_KEPT 5
#define MAX_FIELD 512            /* host, server name, addresses, login, password */
#define MAX_CLIENTS 10000
#define MAX_MESSAGES 10000000L
#define MAX_SIZE (64L << 20)
#define MAX_USERS 100000
#define MAX_EVENTS 256           /* per epoll_wait */
#define CLOSE_READS 16           /* records read after our close_notify, waiting for the server's */

static const char EHLO[] = "EHLO client.bench.example\r\n";

struct options {
    const char *host, *port, *cafile, *server_name, *sender, *recipient, *users_file;
    long clients, messages, per_conn, size;
    int warmup;
};

struct user {
    char login[MAX_FIELD];
    char *auth;                  /* "AUTH PLAIN <base64>\r\n" */
    size_t auth_len;
};

/* Where a connection is in its session. From GREETING to QUIT a phase is one step: the
 * command in out (none for GREETING, RCPT and DATA, whose commands went with MAIL's), then
 * its reply, which must have the code expected[phase]. */
enum phase {
    IDLE,                        /* no session (the run's messages are used up) */
    CONNECTING,                  /* non-blocking connect() in progress */
    GREETING, EHLO_PLAIN, START_TLS,
    HANDSHAKE,                   /* SSL_connect() */
    EHLO_TLS, AUTH, MAIL, RCPT, DATA, DOT, QUIT,
    SHUTDOWN,                    /* our close_notify */
    CLOSING,                     /* reading until the server's close_notify (or end of stream) */
};

static const int expected[CLOSING + 1] = {
    [GREETING] = 220, [EHLO_PLAIN] = 250, [START_TLS] = 220, [EHLO_TLS] = 250, [AUTH] = 235,
    [MAIL] = 250, [RCPT] = 250, [DATA] = 354, [DOT] = 250, [QUIT] = 221,
};

struct conn {
    enum phase phase;
    int fd;
    SSL *ssl;
    const struct user *user;
    long count;                  /* messages this session has still to send */
    double opened;               /* just before connect() */
    double since;                /* the current message's latency counts from here */
    double began;                /* its MAIL FROM was written */
    const char *out;             /* the step's command; out[sent..out_len) is still to write */
    size_t out_len, sent;
    int lines;                   /* lines of the reply so far */
    size_t text_len;
    char text[REPLY_TEXT];       /* those lines, joined by " / " */
    int may_read;                /* epoll reported the socket since our last read */
    uint32_t events;             /* what epoll watches for (0: fd not in the epoll set) */
    int close_reads;             /* CLOSING: reads left */
    double deadline;             /* for the current step */
    struct conn *prev, *next;    /* in the deadline list */
    size_t start, end;           /* unread bytes: buf[start..end) */
    char buf[READ_BUF];
    char err[ERROR_TEXT_MAX];
};

/* Read-only after start-up. */
static struct options opt;
static SSL_CTX *ctx;
static int send_sni;             /* --server-name is a name, not an address */
static struct sockaddr_storage server_addr;
static socklen_t server_addr_len;
static char *message, *envelope;
static size_t message_len, envelope_len;
static struct user *users;
static size_t user_count;

/* The run. */
static int epfd;
static struct conn *first_due, *last_due;  /* connections with a deadline, earliest first */
static long active;                /* connections not IDLE */
static size_t warmup_next;         /* --warmup: the next user to log in */
static long remaining, ok_count, error_count;
static char errors[MAX_ERRORS_KEPT][ERROR_TEXT_MAX];
static int errors_kept;
static double *latencies, *transactions, *setups;
static long latency_n, setup_n;
static char tls_text[128];

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;
    fputs("authload: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* --- results ------------------------------------------------------------------------------ */

static void record_error(long count, const char *prefix, const char *text)
{
    error_count += count;
    for (long i = 0; i < count && errors_kept < MAX_ERRORS_KEPT; i++) {
        char *out = errors[errors_kept++];  /* prefix and text, cut to ERROR_TEXT_MAX - 1 */
        size_t a = strlen(prefix), b = strlen(text);
        a = a < ERROR_TEXT_MAX - 1 ? a : ERROR_TEXT_MAX - 1;
        b = b < ERROR_TEXT_MAX - 1 - a ? b : ERROR_TEXT_MAX - 1 - a;
        memcpy(out, prefix, a);
        memcpy(out + a, text, b);
        out[a + b] = '\0';
    }
}

static void record_setup(double seconds)
{
    if (setup_n < opt.messages)
        setups[setup_n++] = seconds;
}

static void record_message(double transaction, double latency)
{
    ok_count++;
    if (latency_n < opt.messages) {
        transactions[latency_n] = transaction;
        latencies[latency_n++] = latency;
    }
}

/* How many messages the next session sends (0: the run's messages are used up). */
static long take_messages(void)
{
    long count = remaining < opt.per_conn ? remaining : opt.per_conn;
    remaining -= count;
    return count;
}

/* --- one connection: I/O ----------------------------------------------------------------
 * The I/O functions return 1 when done, 0 when the connection must wait (what for is set in
 * epoll), -1 on failure (the text in c->err). */

static int fail(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(struct conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return -1;
}

/* Wait until the socket is readable (EPOLLIN) or writable (EPOLLOUT); epoll_ctl() only when
 * that changes. Level-triggered: what is there when we start waiting is reported at once. */
static int wait_for(struct conn *c, uint32_t events)
{
    char ebuf[128];

    if (c->events != events) {
        struct epoll_event ev = {.events = events, .data.ptr = c};
        if (epoll_ctl(epfd, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) < 0)
            return fail(c, "epoll_ctl: %s", strerror_r(errno, ebuf, sizeof ebuf));
        c->events = events;
    }
    return 0;
}

/* The current step gets REPLY_TIMEOUT_S from now: to the end of the deadline list. */
static void unlink_deadline(struct conn *c)
{
    if (!c->prev && first_due != c)
        return;  /* not in the list */
    *(c->prev ? &c->prev->next : &first_due) = c->next;
    *(c->next ? &c->next->prev : &last_due) = c->prev;
    c->prev = c->next = NULL;
}

static void set_deadline(struct conn *c)
{
    unlink_deadline(c);
    c->deadline = now() + REPLY_TIMEOUT_S;
    c->prev = last_due;
    *(last_due ? &last_due->next : &first_due) = c;
    last_due = c;
}

/* After an SSL call returned ret <= 0 (saved_errno: errno right after it): wait for what it
 * wants, or say why it failed. */
static int ssl_wait(struct conn *c, const char *what, int ret, int saved_errno)
{
    int kind = SSL_get_error(c->ssl, ret);
    char detail[256], ebuf[128];

    if (kind == SSL_ERROR_WANT_READ)
        return wait_for(c, EPOLLIN);
    if (kind == SSL_ERROR_WANT_WRITE)
        return wait_for(c, EPOLLOUT);
    unsigned long code = ERR_get_error();
    long verify = SSL_get_verify_result(c->ssl);
    ERR_clear_error();  /* one thread, one error queue: nothing left for the next connection */
    if (verify != X509_V_OK)
        return fail(c, "%s: certificate verification failed: %s", what, X509_verify_cert_error_string(verify));
    if (code) {
        ERR_error_string_n(code, detail, sizeof detail);
        return fail(c, "%s: %s", what, detail);
    }
    if (kind == SSL_ERROR_SYSCALL && saved_errno)
        return fail(c, "%s: %s", what, strerror_r(saved_errno, ebuf, sizeof ebuf));
    if (kind == SSL_ERROR_ZERO_RETURN || kind == SSL_ERROR_SYSCALL)
        return fail(c, "%s: connection closed", what);
    return fail(c, "%s: SSL error %d", what, kind);
}

/* Write the rest of the step's command (partial writes: the rest waits for EPOLLOUT). */
static int flush(struct conn *c)
{
    char ebuf[128];

    while (c->sent < c->out_len) {
        size_t left = c->out_len - c->sent;
        if (c->ssl) {
            ERR_clear_error();
            int n = SSL_write(c->ssl, c->out + c->sent, (int)left);  /* <= MAX_SIZE + headers */
            if (n <= 0)
                return ssl_wait(c, "TLS write", n, errno);
            c->sent += (size_t)n;  /* SSL_MODE_ENABLE_PARTIAL_WRITE: whole records, maybe not all */
        } else {
            ssize_t n = send(c->fd, c->out + c->sent, left, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return wait_for(c, EPOLLOUT);
            if (n < 0)
                return fail(c, "write: %s", strerror_r(errno, ebuf, sizeof ebuf));
            c->sent += (size_t)n;
        }
    }
    return 1;
}

/* Read what has arrived into c->buf. A read is tried only when epoll has reported the socket
 * since the last one, or OpenSSL holds bytes it has read ahead; otherwise the connection waits
 * without a read() that would only say EAGAIN. */
static int fill(struct conn *c)
{
    char ebuf[128];

    if (c->start > 0) {
        memmove(c->buf, c->buf + c->start, c->end - c->start);
        c->end -= c->start;
        c->start = 0;
    }
    if (!c->may_read && !(c->ssl && SSL_has_pending(c->ssl)))
        return wait_for(c, EPOLLIN);
    c->may_read = 0;
    if (c->ssl) {
        ERR_clear_error();
        int n = SSL_read(c->ssl, c->buf + c->end, (int)(sizeof c->buf - c->end));
        if (n > 0) {
            c->end += (size_t)n;
            return 1;
        }
        int saved_errno = errno;
        if (SSL_get_error(c->ssl, n) == SSL_ERROR_ZERO_RETURN)
            return fail(c, "connection closed while waiting for %d", expected[c->phase]);
        return ssl_wait(c, "TLS read", n, saved_errno);
    }
    ssize_t n;
    do
        n = recv(c->fd, c->buf + c->end, sizeof c->buf - c->end, 0);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        c->end += (size_t)n;
        return 1;
    }
    if (n == 0)
        return fail(c, "connection closed while waiting for %d", expected[c->phase]);
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return wait_for(c, EPOLLIN);
    return fail(c, "read: %s", strerror_r(errno, ebuf, sizeof ebuf));
}

/* Append n bytes of s to the NUL-terminated text (capacity cap), cut with "..." when full. */
static void append(char *text, size_t cap, size_t *used, const char *s, size_t n)
{
    if (n == 0)
        return;
    if (*used + n > cap - 1) {  /* as much as fits, then "..." (again, if already full) */
        memcpy(text + *used, s, cap - 1 - *used);
        memcpy(text + cap - 4, "...", 3);
        *used = cap - 1;
    } else {
        memcpy(text + *used, s, n);
        *used += n;
    }
    text[*used] = '\0';
}

/* The step's reply from what c->buf holds: 1 complete with the expected code, 0 incomplete,
 * -1 anything else (c->err). */
static int parse_reply(struct conn *c)
{
    int want = expected[c->phase];

    for (;;) {
        char *line = c->buf + c->start;
        char *nl = memchr(line, '\n', c->end - c->start);
        if (!nl && c->end - c->start < MAX_LINE)
            return 0;
        size_t len = nl ? (size_t)(nl - line) + 1 : MAX_LINE + 1;
        if (len > MAX_LINE)
            return fail(c, "reply line longer than %d bytes while waiting for %d", MAX_LINE, want);
        c->start += len;
        int last = len < 4 || line[3] != '-';
        while (len > 0 && strchr(" \t\r\n\v\f", line[len - 1]))  /* NUL too, as before */
            len--;
        if (c->lines)  /* the reply's lines joined by " / ", for an error text */
            append(c->text, sizeof c->text, &c->text_len, " / ", 3);
        append(c->text, sizeof c->text, &c->text_len, line, len);
        if (last) {
            if (len >= 3 && line[0] >= '0' && line[0] <= '9' && line[1] >= '0' && line[1] <= '9' &&
                line[2] >= '0' && line[2] <= '9' &&
                (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0') == want)
                return 1;
            return fail(c, "expected %d, got \"%s\"", want, c->text);
        }
        if (++c->lines == MAX_REPLY_LINES)
            return fail(c, "more than %d reply lines while waiting for %d", MAX_REPLY_LINES, want);
    }
}

/* --- one connection: the session ------------------------------------------------------------ */

/* Enter a phase: its command (or none), an empty reply, a new deadline. */
static void begin(struct conn *c, enum phase phase, const char *out, size_t len)
{
    c->phase = phase;
    c->out = out;
    c->out_len = len;
    c->sent = 0;
    c->lines = 0;
    c->text_len = 0;
    c->text[0] = '\0';
    set_deadline(c);
}

static void close_conn(struct conn *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);  /* also takes it out of the epoll set */
    ERR_clear_error();  /* nothing left over for the next session's error texts */
    unlink_deadline(c);
    c->fd = -1;
    c->events = 0;
    c->start = c->end = 0;
}

/* A socket and a non-blocking connect(); the session goes on in step(). */
static int open_connection(struct conn *c)
{
    int one = 1;
    char ebuf[128];

    c->opened = c->since = now();
    c->fd = socket(server_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return fail(c, "socket: %s", strerror_r(errno, ebuf, sizeof ebuf));
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  /* as asyncio does */
    c->may_read = 0;
    c->close_reads = CLOSE_READS;
    begin(c, CONNECTING, NULL, 0);
    if (connect(c->fd, (struct sockaddr *)&server_addr, server_addr_len) < 0 && errno != EINPROGRESS)
        return fail(c, "connect to %s port %s: %s", opt.host, opt.port, strerror_r(errno, ebuf, sizeof ebuf));
    return wait_for(c, EPOLLOUT);  /* writable: connected, or failed (SO_ERROR) */
}

/* The reply of the step in c->phase has come: start the next step. 0, or -1 (c->err). */
static int advance(struct conn *c)
{
    switch (c->phase) {
    case GREETING:
        begin(c, EHLO_PLAIN, EHLO, sizeof EHLO - 1);
        return 0;
    case EHLO_PLAIN:
        begin(c, START_TLS, "STARTTLS\r\n", 10);
        return 0;
    case START_TLS:
        if (c->start != c->end)
            return fail(c, "data after the reply to STARTTLS");
        c->ssl = SSL_new(ctx);
        if (!c->ssl)
            return fail(c, "SSL_new failed");
        SSL_set_fd(c->ssl, c->fd);
        if (send_sni)  /* the certificate's name check is in the context's verify parameters */
            SSL_set_tlsext_host_name(c->ssl, opt.server_name);
        begin(c, HANDSHAKE, NULL, 0);
        return 0;
    case EHLO_TLS:
        begin(c, AUTH, c->user->auth, c->user->auth_len);
        return 0;
    case AUTH:
        if (!opt.warmup)
            record_setup(now() - c->opened);
        break;
    case MAIL:
        begin(c, RCPT, NULL, 0);
        return 0;
    case RCPT:
        begin(c, DATA, NULL, 0);
        return 0;
    case DATA:
        begin(c, DOT, message, message_len);
        return 0;
    case DOT: {
        double done = now();
        record_message(done - c->began, done - c->since);
        c->count--;
        c->since = done;  /* the next message waits from here */
        break;
    }
    case QUIT:  /* 221: the TLS close, as the Python client did it */
        begin(c, SHUTDOWN, NULL, 0);
        return 0;
    default:
        return fail(c, "internal error: no reply expected in phase %d", (int)c->phase);
    }
    if (c->count > 0) {  /* after 235 or a 250 for a message: the next message, or QUIT */
        begin(c, MAIL, envelope, envelope_len);
        c->began = now();
    } else {
        begin(c, QUIT, "QUIT\r\n", 6);
    }
    return 0;
}

/* Take the session as far as it goes without waiting: 0 waiting, 1 ended (every message
 * accepted, QUIT answered, TLS closed), -1 failed (c->err). */
static int step(struct conn *c)
{
    char scratch[512], ebuf[128];
    int r, err;
    socklen_t len;

    for (;;) {
        switch (c->phase) {
        case IDLE:
            return 0;
        case CONNECTING:
            err = 0;
            len = sizeof err;
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = errno;
            if (err)
                return fail(c, "connect to %s port %s: %s", opt.host, opt.port, strerror_r(err, ebuf, sizeof ebuf));
            c->may_read = 0;  /* nothing has been read yet; wait for the greeting */
            begin(c, GREETING, NULL, 0);
            break;
        case HANDSHAKE:
            ERR_clear_error();
            r = SSL_connect(c->ssl);
            if (r != 1)
                return ssl_wait(c, "TLS handshake", r, errno);
            if (!tls_text[0])
                snprintf(tls_text, sizeof tls_text, "%s %s", SSL_get_version(c->ssl),
                         SSL_CIPHER_get_name(SSL_get_current_cipher(c->ssl)));
            c->may_read = 0;  /* SSL_connect() has read what there was: wait for the reply */
            begin(c, EHLO_TLS, EHLO, sizeof EHLO - 1);
            break;
        case SHUTDOWN:  /* failures from here on end the session without an error */
            ERR_clear_error();
            r = SSL_shutdown(c->ssl);
            if (r == 1)
                return 1;  /* the server's close_notify was already in */
            if (r < 0)
                return ssl_wait(c, "TLS close", r, errno) < 0 ? 1 : 0;
            c->phase = CLOSING;
            break;
        case CLOSING:  /* the connection ends with nothing unread: close() sends a FIN, not RST */
            ERR_clear_error();
            r = SSL_read(c->ssl, scratch, sizeof scratch);
            if (r > 0) {
                if (--c->close_reads == 0)
                    return 1;
                break;
            }
            return ssl_wait(c, "TLS close", r, errno) < 0 ? 1 : 0;
        default:  /* a command, then its reply */
            if ((r = flush(c)) <= 0)
                return r;
            while ((r = parse_reply(c)) == 0)
                if ((r = fill(c)) <= 0)
                    return r;
            if (r < 0 || advance(c) < 0)
                return -1;
        }
    }
}

/* The step in progress has had REPLY_TIMEOUT_S: the text for it, -1; 1 when the session is over
 * anyway (waiting for the TLS close). */
static int timed_out(struct conn *c)
{
    switch (c->phase) {
    case CONNECTING:
        return fail(c, "connect to %s port %s: timeout (%d s)", opt.host, opt.port, REPLY_TIMEOUT_S);
    case HANDSHAKE:
        return fail(c, "TLS handshake: timeout (%d s)", REPLY_TIMEOUT_S);
    case SHUTDOWN:
    case CLOSING:
        return 1;
    default:
        if (c->sent < c->out_len)
            return fail(c, "timeout (%d s) writing", REPLY_TIMEOUT_S);
        return fail(c, "timeout (%d s) waiting for %d", REPLY_TIMEOUT_S, expected[c->phase]);
    }
}

/* End c's session (result 1: done, -1: failed, c->err says why; 0: there was none), then
 * start its next session while messages remain (--warmup: while users remain); otherwise c is
 * done. */
static void end_session(struct conn *c, int result)
{
    for (;;) {
        if (result < 0) {  /* what fails counts as an error for each message unsent */
            if (opt.warmup) {
                char prefix[MAX_FIELD + 2];
                snprintf(prefix, sizeof prefix, "%s: ", c->user->login);
                record_error(1, prefix, c->err);
            } else {
                record_error(c->count, "", c->err);  /* 0 when only QUIT failed */
            }
        }
        close_conn(c);
        if (opt.warmup) {  /* each user once, one after another */
            if (warmup_next == user_count)
                break;
            c->user = &users[warmup_next++];
            c->count = 0;
        } else if ((c->count = take_messages()) == 0) {
            break;
        }
        if (open_connection(c) == 0)
            return;
        result = -1;
    }
    c->phase = IDLE;
    active--;
}

/* --- the event loop ----------------------------------------------------------------------- */

static void run(long clients)
{
    static struct epoll_event events[MAX_EVENTS];
    struct conn *conns = calloc((size_t)clients, sizeof *conns);

    if (!conns)
        die("out of memory");
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1: %s", strerror(errno));
    for (long i = 0; i < clients; i++) {  /* all start at once */
        struct conn *c = &conns[i];
        c->fd = -1;
        c->user = &users[(size_t)i % user_count];
        active++;
        end_session(c, 0);  /* no session yet: opens the first */
    }
    while (active > 0) {
        int timeout = -1;
        if (first_due) {
            double ms = (first_due->deadline - now()) * 1e3;
            timeout = ms <= 0 ? 0 : (int)ms + 1;
        }
        int n = epoll_wait(epfd, events, MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            c->may_read = 1;  /* readable, writable, or an error or hang-up: try again */
            int r = step(c);
            if (r != 0)
                end_session(c, r);
        }
        double t = now();
        while (first_due && first_due->deadline <= t)
            end_session(first_due, timed_out(first_due));  /* takes it out of the list */
    }
    close(epfd);
    free(conns);
}

/* --- start-up ------------------------------------------------------------------------------ */

static long number(const char *name, const char *text, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max)
        die("--%s: expected a number from %ld to %ld, got '%s'", name, min, max, text);
    return v;
}

static const char *field(const char *name, const char *text)
{
    size_t n = strlen(text);
    if (n == 0 || n >= MAX_FIELD)
        die("--%s: expected 1 to %d characters", name, MAX_FIELD - 1);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)text[i] < 0x20 || text[i] == 0x7f)
            die("--%s: control characters are not allowed", name);
    return text;
}

static void parse_options(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"host", required_argument, NULL, 'H'},        {"port", required_argument, NULL, 'p'},
        {"clients", required_argument, NULL, 'c'},     {"messages", required_argument, NULL, 'n'},
        {"per-conn", required_argument, NULL, 'm'},    {"size", required_argument, NULL, 's'},
        {"cafile", required_argument, NULL, 'C'},      {"server-name", required_argument, NULL, 'N'},
        {"sender", required_argument, NULL, 'f'},      {"recipient", required_argument, NULL, 't'},
        {"users", required_argument, NULL, 'u'},       {"warmup", no_argument, NULL, 'w'},
        {NULL, 0, NULL, 0},
    };
    int ch;

    opt.clients = 1;
    opt.per_conn = 1;
    opt.size = 4096;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'H': opt.host = field("host", optarg); break;
        case 'p': opt.port = field("port", optarg); number("port", optarg, 1, 65535); break;
        case 'c': opt.clients = number("clients", optarg, 1, MAX_CLIENTS); break;
        case 'n': opt.messages = number("messages", optarg, 0, MAX_MESSAGES); break;
        case 'm': opt.per_conn = number("per-conn", optarg, 1, MAX_MESSAGES); break;
        case 's': opt.size = number("size", optarg, 0, MAX_SIZE); break;
        case 'C': opt.cafile = field("cafile", optarg); break;
        case 'N': opt.server_name = field("server-name", optarg); break;
        case 'f': opt.sender = field("sender", optarg); break;
        case 't': opt.recipient = field("recipient", optarg); break;
        case 'u': opt.users_file = field("users", optarg); break;
        case 'w': opt.warmup = 1; break;
        default: die("unknown option (see the comment at the top of authload.c)");
        }
    }
    if (optind != argc)
        die("unexpected argument '%s'", argv[optind]);
    if (!opt.host || !opt.port || !opt.cafile || !opt.server_name || !opt.sender || !opt.recipient ||
        !opt.users_file)
        die("needs --host, --port, --cafile, --server-name, --sender, --recipient and --users");
}

static void resolve(void)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    int r = getaddrinfo(opt.host, opt.port, &hints, &res);
    if (r != 0)
        die("%s port %s: %s", opt.host, opt.port, gai_strerror(r));
    if (res->ai_addrlen > sizeof server_addr)
        die("%s: address too long", opt.host);
    memcpy(&server_addr, res->ai_addr, res->ai_addrlen);
    server_addr_len = res->ai_addrlen;
    freeaddrinfo(res);
}

/* "login<TAB>password" lines; each user's AUTH PLAIN command is made here, once. */
static void read_users(void)
{
    FILE *f = fopen(opt.users_file, "r");
    char line[2 * MAX_FIELD + 4];
    size_t cap = 0;

    if (!f)
        die("%s: %s", opt.users_file, strerror(errno));
    while (fgets(line, sizeof line, f)) {
        size_t n = strlen(line);
        if (n > 0 && line[n - 1] == '\n')
            line[--n] = '\0';
        else if (!feof(f))
            die("%s: line %zu too long", opt.users_file, user_count + 1);
        if (n > 0 && line[n - 1] == '\r')
            line[--n] = '\0';
        if (n == 0)
            continue;
        char *tab = strchr(line, '\t');
        if (!tab || tab == line || tab - line >= MAX_FIELD || strlen(tab + 1) >= MAX_FIELD)
            die("%s: line %zu is not login<TAB>password", opt.users_file, user_count + 1);
        *tab = '\0';
        if (user_count == MAX_USERS)
            die("%s: more than %d users", opt.users_file, MAX_USERS);
        if (user_count == cap) {
            cap = cap ? 2 * cap : 16;
            users = realloc(users, cap * sizeof *users);
            if (!users)
                die("out of memory");
        }
        struct user *u = &users[user_count++];
        size_t login_len = strlen(line), password_len = strlen(tab + 1);
        unsigned char raw[2 * MAX_FIELD + 2];  /* \0 login \0 password (RFC 4616) */
        raw[0] = '\0';
        memcpy(raw + 1, line, login_len);
        raw[1 + login_len] = '\0';
        memcpy(raw + 2 + login_len, tab + 1, password_len);
        size_t raw_len = 2 + login_len + password_len;
        size_t b64_len = 4 * ((raw_len + 2) / 3);
        u->auth = malloc(sizeof "AUTH PLAIN " - 1 + b64_len + 3);
        if (!u->auth)
            die("out of memory");
        memcpy(u->auth, "AUTH PLAIN ", 11);
        EVP_EncodeBlock((unsigned char *)u->auth + 11, raw, (int)raw_len);  /* NUL-terminated */
        memcpy(u->auth + 11 + b64_len, "\r\n", 3);
        u->auth_len = 11 + b64_len + 2;
        memcpy(u->login, line, login_len + 1);
        OPENSSL_cleanse(raw, sizeof raw);
    }
    OPENSSL_cleanse(line, sizeof line);
    if (ferror(f))
        die("%s: read error", opt.users_file);
    fclose(f);
    if (user_count == 0)
        die("%s: no users", opt.users_file);
}

static void make_tls_context(void)
{
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        die("SSL_CTX_new failed");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_load_verify_locations(ctx, opt.cafile, NULL) != 1)
        die("%s: cannot load the CA certificates: %s", opt.cafile, ERR_error_string(ERR_get_error(), NULL));
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* No resumption: no tickets, no session cache, and no SSL_set_session() anywhere. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_read_ahead(ctx, 1);  /* one read() for what has arrived, not two per record */
    /* SSL_write() returns what it wrote, whole records, when the socket is full (flush()). */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
    /* The host name check (an address is checked as an address), inherited by every SSL. */
    X509_VERIFY_PARAM *param = SSL_CTX_get0_param(ctx);
    struct in6_addr ip;
    int ok;
    if (inet_pton(AF_INET, opt.server_name, &ip) == 1 || inet_pton(AF_INET6, opt.server_name, &ip) == 1) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(param, opt.server_name);
    } else {
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        ok = X509_VERIFY_PARAM_set1_host(param, opt.server_name, 0);
        send_sni = 1;  /* SNI is for names, not addresses */
    }
    if (ok != 1)
        die("--server-name %s: not usable for the certificate check", opt.server_name);
}

/* Headers and a body of 70-character lines, about size bytes, dot-stuffing not needed. */
static void make_message(void)
{
    static const char body_line[] = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ01234567\r\n";
    const size_t line_len = sizeof body_line - 1;
    char head[3 * MAX_FIELD];
    int head_len = snprintf(head, sizeof head,
                            "From: <%s>\r\nTo: <%s>\r\nSubject: authenticated submission benchmark\r\n"
                            "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n",
                            opt.sender, opt.recipient);
    long lines = (opt.size - head_len) / (long)line_len;
    if (lines < 1)
        lines = 1;
    message_len = (size_t)head_len + (size_t)lines * line_len + 3;
    message = malloc(message_len);
    if (!message)
        die("out of memory");
    char *p = message;
    memcpy(p, head, (size_t)head_len);
    p += head_len;
    for (long i = 0; i < lines; i++, p += line_len)
        memcpy(p, body_line, line_len);
    memcpy(p, ".\r\n", 3);

    char env[3 * MAX_FIELD];
    int env_len = snprintf(env, sizeof env, "MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n", opt.sender, opt.recipient);
    envelope = strdup(env);
    if (!envelope)
        die("out of memory");
    envelope_len = (size_t)env_len;
}

/* --- output --------------------------------------------------------------------------------- */

static void json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch >= 0x80)
            fputs("\\ufffd", stdout);  /* replies are ASCII; anything else becomes U+FFFD */
        else if (ch < 0x20 || ch == 0x7f)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

static void json_errors(void)
{
    printf("\"error_count\": %ld, \"errors\": [", error_count);
    for (int i = 0; i < errors_kept; i++) {
        if (i)
            fputs(", ", stdout);
        json_string(errors[i]);
    }
    putchar(']');
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median, 99th percentile (nearest rank: sorted[ceil(0.99 n) - 1]) and maximum, in ms. */
static void json_percentiles(const char *key, double *seconds, long n)
{
    double p50 = 0, p99 = 0, max = 0;
    if (n > 0) {
        for (long i = 0; i < n; i++)
            seconds[i] *= 1e3;
        qsort(seconds, (size_t)n, sizeof *seconds, compare_doubles);
        p50 = n % 2 ? seconds[n / 2] : (seconds[n / 2 - 1] + seconds[n / 2]) / 2;
        double x = 0.99 * (double)n;
        long rank = (long)x;
        if ((double)rank < x)
            rank++;
        p99 = seconds[rank - 1];
        max = seconds[n - 1];
    }
    printf(", \"%s\": {\"p50\": %.6f, \"p99\": %.6f, \"max\": %.6f}", key, p50, p99, max);
}

int main(int argc, char **argv)
{
    parse_options(argc, argv);
    signal(SIGPIPE, SIG_IGN);  /* a server that went away is an error text, not a signal */
    resolve();
    read_users();
    make_tls_context();
    make_message();

    if (opt.warmup) {
        run(1);
        putchar('{');
        json_errors();
        puts("}");
        return fflush(stdout) == 0 ? 0 : 1;
    }

    size_t slots = opt.messages > 0 ? (size_t)opt.messages : 1;
    latencies = calloc(slots, sizeof *latencies);
    transactions = calloc(slots, sizeof *transactions);
    setups = calloc(slots, sizeof *setups);
    if (!latencies || !transactions || !setups)
        die("out of memory");
    remaining = opt.messages;

    double cpu_before = cpu_seconds(), start = now();
    run(opt.clients);
    double wall = now() - start, cpu = cpu_seconds() - cpu_before;

    printf("{\"ok\": %ld, ", ok_count);
    json_errors();
    printf(", \"wall_s\": %.6f, \"msgs_per_s\": %.3f, \"client_cpu_s\": %.6f, \"sessions\": %ld, \"tls\": ", wall,
           wall > 0 ? ok_count / wall : 0.0, cpu, setup_n);
    json_string(tls_text);
    json_percentiles("latency_ms", latencies, latency_n);
    json_percentiles("transaction_ms", transactions, latency_n);
    json_percentiles("setup_ms", setups, setup_n);
    puts("}");
    return fflush(stdout) == 0 ? 0 : 1;
}
