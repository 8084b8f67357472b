/*
 * Load client for authenticated submission; bench/auth.py compiles it into its work directory
 * and runs it as its own process:
 *
 *     cc -O2 -Wall -o WORKDIR/authload bench/authload.c -lssl -lcrypto -lpthread
 *
 * smtp-source cannot authenticate, and a Python client costs about as much CPU per message as
 * the server it measures, so this is a small C client on OpenSSL: one POSIX thread per
 * concurrent client, blocking sockets, blocking SSL_read/SSL_write. Each client repeats a
 * session until the run's messages are used up:
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
 * RUSAGE_SELF, user + system, all threads).
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
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
#define REPLY_TIMEOUT_S 60       /* seconds; see fill() (-D to test with less) */
#endif
#define MAX_LINE 4096            /* one reply line, CRLF included; longer is an error */
#define MAX_REPLY_LINES 100      /* lines of one multi-line reply */
#define READ_BUF 16384           /* per connection; larger than MAX_LINE */
#define ERROR_TEXT_MAX 1024
#define MAX_ERRORS_KEPT 5
#define MAX_FIELD 512            /* host, server name, addresses, login, password */
#define MAX_CLIENTS 10000
#define MAX_MESSAGES 10000000L
#define MAX_SIZE (64L << 20)
#define MAX_USERS 100000
#define THREAD_STACK (512 * 1024)

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

struct conn {
    int fd;
    SSL *ssl;
    size_t start, end;           /* unread bytes: buf[start..end) */
    char buf[READ_BUF];
    char err[ERROR_TEXT_MAX];
};

/* Read-only after start-up. */
static struct options opt;
static SSL_CTX *ctx;
static struct sockaddr_storage server_addr;
static socklen_t server_addr_len;
static char *message, *envelope;
static size_t message_len, envelope_len;
static struct user *users;
static size_t user_count;

/* Shared by the client threads, under lock. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
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
    pthread_mutex_lock(&lock);
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
    pthread_mutex_unlock(&lock);
}

static void record_setup(double seconds)
{
    pthread_mutex_lock(&lock);
    if (setup_n < opt.messages)
        setups[setup_n++] = seconds;
    pthread_mutex_unlock(&lock);
}

static void record_message(double transaction, double latency)
{
    pthread_mutex_lock(&lock);
    ok_count++;
    if (latency_n < opt.messages) {
        transactions[latency_n] = transaction;
        latencies[latency_n++] = latency;
    }
    pthread_mutex_unlock(&lock);
}

/* How many messages the next session sends (0: the run's messages are used up). */
static long take_messages(void)
{
    pthread_mutex_lock(&lock);
    long count = remaining < opt.per_conn ? remaining : opt.per_conn;
    remaining -= count;
    pthread_mutex_unlock(&lock);
    return count;
}

/* --- one connection ---------------------------------------------------------------------- */

static int fail(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(struct conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return -1;
}

/* After an SSL call returned ret <= 0: say why (saved_errno is errno right after the call). */
static int ssl_fail(struct conn *c, const char *what, int ret, int saved_errno)
{
    int kind = SSL_get_error(c->ssl, ret);
    unsigned long code = ERR_get_error();
    long verify = SSL_get_verify_result(c->ssl);
    char detail[256], ebuf[128];

    if (verify != X509_V_OK)
        return fail(c, "%s: certificate verification failed: %s", what, X509_verify_cert_error_string(verify));
    if (code) {
        ERR_error_string_n(code, detail, sizeof detail);
        ERR_clear_error();
        return fail(c, "%s: %s", what, detail);
    }
    if (kind == SSL_ERROR_WANT_READ || kind == SSL_ERROR_WANT_WRITE ||  /* a socket timeout expired */
        (kind == SSL_ERROR_SYSCALL && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK)))
        return fail(c, "%s: timeout (%d s)", what, REPLY_TIMEOUT_S);
    if (kind == SSL_ERROR_SYSCALL && saved_errno)
        return fail(c, "%s: %s", what, strerror_r(saved_errno, ebuf, sizeof ebuf));
    if (kind == SSL_ERROR_ZERO_RETURN || kind == SSL_ERROR_SYSCALL)
        return fail(c, "%s: connection closed", what);
    return fail(c, "%s: SSL error %d", what, kind);
}

/* Read more bytes into c->buf: > 0 bytes read, 0 end of stream, -1 error (c->err).
 * The reply timeout: every blocking read waits at most REPLY_TIMEOUT_S (SO_RCVTIMEO, one
 * system call per read instead of poll + read), and a line still incomplete REPLY_TIMEOUT_S
 * after it was started fails before the next read. */
static int fill(struct conn *c, double deadline, int expected)
{
    char ebuf[128];

    if (c->start > 0) {
        memmove(c->buf, c->buf + c->start, c->end - c->start);
        c->end -= c->start;
        c->start = 0;
    }
    if (now() > deadline)
        return fail(c, "timeout (%d s) waiting for %d", REPLY_TIMEOUT_S, expected);
    if (c->ssl) {
        int n = SSL_read(c->ssl, c->buf + c->end, (int)(sizeof c->buf - c->end));
        if (n > 0) {
            c->end += (size_t)n;
            return n;
        }
        int saved_errno = errno, kind = SSL_get_error(c->ssl, n);
        if (kind == SSL_ERROR_ZERO_RETURN)
            return 0;
        if (kind == SSL_ERROR_WANT_READ || kind == SSL_ERROR_WANT_WRITE)  /* SO_RCVTIMEO expired */
            return fail(c, "timeout (%d s) waiting for %d", REPLY_TIMEOUT_S, expected);
        return ssl_fail(c, "TLS read", n, saved_errno);
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
        return 0;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return fail(c, "timeout (%d s) waiting for %d", REPLY_TIMEOUT_S, expected);
    return fail(c, "read: %s", strerror_r(errno, ebuf, sizeof ebuf));
}

/* One line, "\n" included, into line (at least MAX_LINE + 1 bytes), NUL-terminated. */
static int read_line(struct conn *c, char *line, size_t *len, int expected)
{
    double deadline = now() + REPLY_TIMEOUT_S;
    for (;;) {
        char *nl = memchr(c->buf + c->start, '\n', c->end - c->start);
        if (nl) {
            size_t n = (size_t)(nl - (c->buf + c->start)) + 1;
            if (n > MAX_LINE)
                break;
            memcpy(line, c->buf + c->start, n);
            line[n] = '\0';
            *len = n;
            c->start += n;
            return 0;
        }
        if (c->end - c->start >= MAX_LINE)
            break;
        int r = fill(c, deadline, expected);
        if (r == 0)
            return fail(c, "connection closed while waiting for %d", expected);
        if (r < 0)
            return -1;
    }
    return fail(c, "reply line longer than %d bytes while waiting for %d", MAX_LINE, expected);
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

/* Read one (possibly multi-line) reply; -1 (c->err) unless its code is expected. */
static int reply(struct conn *c, int expected)
{
    char line[MAX_LINE + 1], text[ERROR_TEXT_MAX - 64];
    size_t len = 0, used = 0;

    text[0] = '\0';
    for (int lines = 0;; lines++) {
        if (lines == MAX_REPLY_LINES)
            return fail(c, "more than %d reply lines while waiting for %d", MAX_REPLY_LINES, expected);
        if (read_line(c, line, &len, expected) < 0)
            return -1;
        int last = len < 4 || line[3] != '-';
        while (len > 0 && strchr(" \t\r\n\v\f", line[len - 1]))
            line[--len] = '\0';
        if (lines)  /* the reply's lines joined by " / ", for an error text */
            append(text, sizeof text, &used, " / ", 3);
        append(text, sizeof text, &used, line, len);
        if (last) {
            if (len >= 3 && line[0] >= '0' && line[0] <= '9' && line[1] >= '0' && line[1] <= '9' &&
                line[2] >= '0' && line[2] <= '9' &&
                (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0') == expected)
                return 0;
            return fail(c, "expected %d, got \"%s\"", expected, text);
        }
    }
}

static int write_all(struct conn *c, const char *data, size_t len)
{
    char ebuf[128];

    if (c->ssl) {
        int n = SSL_write(c->ssl, data, (int)len);  /* len <= MAX_SIZE + headers: fits an int */
        if (n > 0)
            return 0;
        return ssl_fail(c, "TLS write", n, errno);
    }
    while (len > 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return fail(c, "timeout (%d s) writing", REPLY_TIMEOUT_S);
        if (n < 0)
            return fail(c, "write: %s", strerror_r(errno, ebuf, sizeof ebuf));
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static int command(struct conn *c, const char *line, size_t len, int expected)
{
    if (write_all(c, line, len) < 0)
        return -1;
    return reply(c, expected);
}

static void close_conn(struct conn *c, int clean)
{
    if (c->ssl) {
        /* After 221: our close_notify, then the server's (or its end of stream), as the Python
         * client did; the connection ends with nothing unread, so close() sends a FIN, not RST. */
        if (clean && SSL_shutdown(c->ssl) == 0) {
            char scratch[512];
            for (int i = 0; i < 16 && SSL_read(c->ssl, scratch, sizeof scratch) > 0; i++)
                ;
        }
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    ERR_clear_error();  /* nothing left over for the next session's error texts */
    c->fd = -1;
    c->start = c->end = 0;
}

/* connect ... 235; -1 (c->err) on any failure. */
static int open_session(struct conn *c, const struct user *u)
{
    struct timeval tv = {.tv_sec = REPLY_TIMEOUT_S};
    int one = 1;
    char ebuf[128];

    c->fd = socket(server_addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return fail(c, "socket: %s", strerror_r(errno, ebuf, sizeof ebuf));
    /* Bounds each blocking connect, read, write and so the TLS handshake (see fill()). */
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  /* as asyncio does */
    if (connect(c->fd, (struct sockaddr *)&server_addr, server_addr_len) < 0)
        return fail(c, "connect to %s port %s: %s", opt.host, opt.port, strerror_r(errno, ebuf, sizeof ebuf));
    if (reply(c, 220) < 0 || command(c, EHLO, sizeof EHLO - 1, 250) < 0 ||
        command(c, "STARTTLS\r\n", 10, 220) < 0)
        return -1;
    if (c->start != c->end)
        return fail(c, "data after the reply to STARTTLS");
    c->ssl = SSL_new(ctx);
    if (!c->ssl)
        return fail(c, "SSL_new failed");
    SSL_set_fd(c->ssl, c->fd);
    {  /* the certificate's host name (or address) check is in the context's verify parameters */
        struct in6_addr ip;
        if (inet_pton(AF_INET, opt.server_name, &ip) != 1 && inet_pton(AF_INET6, opt.server_name, &ip) != 1)
            SSL_set_tlsext_host_name(c->ssl, opt.server_name);  /* SNI is for names, not addresses */
    }
    ERR_clear_error();
    int r = SSL_connect(c->ssl);
    if (r != 1)
        return ssl_fail(c, "TLS handshake", r, errno);
    pthread_mutex_lock(&lock);
    if (!tls_text[0])
        snprintf(tls_text, sizeof tls_text, "%s %s", SSL_get_version(c->ssl),
                 SSL_CIPHER_get_name(SSL_get_current_cipher(c->ssl)));
    pthread_mutex_unlock(&lock);
    if (command(c, EHLO, sizeof EHLO - 1, 250) < 0 || command(c, u->auth, u->auth_len, 235) < 0)
        return -1;
    return 0;
}

/* One session sending count messages; what fails counts as an error for each message unsent. */
static void session(struct conn *c, const struct user *u, long count)
{
    double start = now();

    if (open_session(c, u) < 0)
        goto failed;
    record_setup(now() - start);
    while (count > 0) {
        double began = now();
        if (write_all(c, envelope, envelope_len) < 0 || reply(c, 250) < 0 || reply(c, 250) < 0 ||
            reply(c, 354) < 0 || write_all(c, message, message_len) < 0 || reply(c, 250) < 0)
            goto failed;
        double done = now();
        record_message(done - began, done - start);
        count--;
        start = done;  /* the next message waits from here */
    }
    if (command(c, "QUIT\r\n", 6, 221) < 0)
        goto failed;  /* every message was accepted: nothing to count */
    close_conn(c, 1);
    return;
failed:
    record_error(count, "", c->err);
    close_conn(c, 0);
}

static void *client(void *arg)
{
    long index = (long)arg;
    const struct user *u = &users[(size_t)index % user_count];
    struct conn *c = malloc(sizeof *c);
    if (!c) {
        record_error(take_messages(), "", "out of memory");
        return NULL;
    }
    c->fd = -1;
    c->ssl = NULL;
    c->start = c->end = 0;
    long count;
    while ((count = take_messages()) > 0)
        session(c, u, count);
    free(c);
    return NULL;
}

/* Each user opens a session once, one after another, then QUIT (fills the credential caches). */
static void warmup(void)
{
    static struct conn c;
    char prefix[MAX_FIELD + 2];

    for (size_t i = 0; i < user_count; i++) {
        c.fd = -1;
        c.ssl = NULL;
        c.start = c.end = 0;
        if (open_session(&c, &users[i]) < 0 || command(&c, "QUIT\r\n", 6, 221) < 0) {
            snprintf(prefix, sizeof prefix, "%s: ", users[i].login);
            record_error(1, prefix, c.err);
            close_conn(&c, 0);
        } else {
            close_conn(&c, 1);
        }
    }
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
    /* The host name check (an address is checked as an address), inherited by every SSL. */
    X509_VERIFY_PARAM *param = SSL_CTX_get0_param(ctx);
    struct in6_addr ip;
    int ok;
    if (inet_pton(AF_INET, opt.server_name, &ip) == 1 || inet_pton(AF_INET6, opt.server_name, &ip) == 1) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(param, opt.server_name);
    } else {
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        ok = X509_VERIFY_PARAM_set1_host(param, opt.server_name, 0);
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
        warmup();
        putchar('{');
        json_errors();
        puts("}");
        return fflush(stdout) == 0 ? 0 : 1;
    }

    size_t slots = opt.messages > 0 ? (size_t)opt.messages : 1;
    latencies = calloc(slots, sizeof *latencies);
    transactions = calloc(slots, sizeof *transactions);
    setups = calloc(slots, sizeof *setups);
    pthread_t *threads = calloc((size_t)opt.clients, sizeof *threads);
    if (!latencies || !transactions || !setups || !threads)
        die("out of memory");
    remaining = opt.messages;

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, THREAD_STACK);
    double cpu_before = cpu_seconds(), start = now();
    for (long i = 0; i < opt.clients; i++) {
        int r = pthread_create(&threads[i], &attr, client, (void *)i);
        if (r != 0)
            die("cannot start client thread %ld: %s", i, strerror(r));
    }
    for (long i = 0; i < opt.clients; i++)
        pthread_join(threads[i], NULL);
    free(threads);
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
