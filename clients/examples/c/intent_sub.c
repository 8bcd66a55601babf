/*
 * Minimal intentd subscriber in C: prints one line per intent event.
 *
 *   build: make -C clients/examples/c     (needs gcc, pkg-config, libzmq3-dev, libcjson-dev)
 *   run:   clients/examples/c/intent_sub tcp://127.0.0.1:5556
 *
 * stdout: "SEQ INTENT SCORE SOURCE TOTAL_MS ms", one line per intent event.
 * stderr: gaps, restarts and skipped messages (malformed or another protocol version).
 * Exits 0 on SIGINT/SIGTERM. See clients/PROTOCOL.md for the wire format.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <zmq.h>

#define PROTOCOL_VERSION 1
#define RECONNECT_IVL_MS 100
#define RECONNECT_IVL_MAX_MS 2000
#define RUN_ID_MAX 128

static volatile sig_atomic_t stop_requested = 0;

static void on_signal(int signum)
{
    (void)signum;
    stop_requested = 1;
}

struct stream {
    char run_id[RUN_ID_MAX]; /* empty until the first valid message */
    long long next_seq;
};

/* One frame as a NUL-terminated string (caller frees); NULL on interrupt or error. */
static char *recv_frame(void *sock, int *more)
{
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, sock, 0) < 0) {
        zmq_msg_close(&msg);
        return NULL;
    }
    size_t n = zmq_msg_size(&msg);
    char *text = malloc(n + 1);
    if (text != NULL) {
        memcpy(text, zmq_msg_data(&msg), n);
        text[n] = '\0';
    }
    *more = zmq_msg_more(&msg);
    zmq_msg_close(&msg);
    return text;
}

static const char *get_string(const cJSON *obj, const char *key)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

static int get_number(const cJSON *obj, const char *key, double *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(item))
        return 0;
    *out = item->valuedouble;
    return 1;
}

/* Seq and run_id bookkeeping: every message of every topic uses one seq number. */
static void track(struct stream *st, const char *run_id, long long seq)
{
    if (st->run_id[0] != '\0' && strcmp(st->run_id, run_id) != 0)
        fprintf(stderr, "# daemon restarted: run %s -> %s\n", st->run_id, run_id);
    else if (st->run_id[0] != '\0' && seq > st->next_seq)
        fprintf(stderr, "# gap: missed %lld message(s) (expected seq %lld, got %lld)\n",
                seq - st->next_seq, st->next_seq, seq);
    snprintf(st->run_id, sizeof st->run_id, "%s", run_id);
    st->next_seq = seq + 1;
}

static void handle(struct stream *st, const char *topic, const char *payload)
{
    cJSON *root = cJSON_Parse(payload);
    double v, seq, score, total;
    const char *type, *run_id, *intent, *source;
    if (!cJSON_IsObject(root)) {
        fprintf(stderr, "skipped malformed JSON on topic %s\n", topic);
        goto done;
    }
    if (!get_number(root, "v", &v) || (int)v != PROTOCOL_VERSION) {
        fprintf(stderr, "skipped a message of another protocol version on topic %s\n", topic);
        goto done;
    }
    type = get_string(root, "type");
    run_id = get_string(root, "run_id");
    if (type == NULL || strcmp(type, topic) != 0 || run_id == NULL
        || !get_number(root, "seq", &seq)) {
        fprintf(stderr, "skipped a malformed message on topic %s\n", topic);
        goto done;
    }
    track(st, run_id, (long long)seq);
    if (strcmp(topic, "intent") != 0)
        goto done; /* heartbeats only feed the bookkeeping above */
    intent = get_string(root, "intent");
    source = get_string(root, "source");
    if (intent == NULL || source == NULL || !get_number(root, "score", &score)
        || !get_number(cJSON_GetObjectItemCaseSensitive(root, "latency_ms"), "total", &total)) {
        fprintf(stderr, "skipped a malformed intent event (seq %lld)\n", (long long)seq);
        goto done;
    }
    printf("%lld %s %.3f %s %.0f ms\n", (long long)seq, intent, score, source, total);
done:
    cJSON_Delete(root);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s ENDPOINT   (e.g. tcp://127.0.0.1:5556)\n", argv[0]);
        return 2;
    }
    /* No SA_RESTART: a signal makes zmq_msg_recv return EINTR so the loop can end. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);

    int rc = 0;
    void *ctx = zmq_ctx_new();
    void *sock = zmq_socket(ctx, ZMQ_SUB);
    int linger = 0, ivl = RECONNECT_IVL_MS, ivl_max = RECONNECT_IVL_MAX_MS;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sock, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max);
    /* All topics: seq counts every message, so gap detection needs them all. */
    zmq_setsockopt(sock, ZMQ_SUBSCRIBE, "", 0);
    if (zmq_connect(sock, argv[1]) != 0) {
        fprintf(stderr, "cannot connect to %s: %s\n", argv[1], zmq_strerror(zmq_errno()));
        rc = 2;
        goto out;
    }

    struct stream st = {.run_id = "", .next_seq = 0};
    while (!stop_requested) {
        int more = 0, frames = 1;
        char *topic = recv_frame(sock, &more);
        if (topic == NULL) {
            if (zmq_errno() != EINTR) {
                fprintf(stderr, "receive failed: %s\n", zmq_strerror(zmq_errno()));
                rc = 1;
            }
            break;
        }
        char *payload = NULL;
        while (more) {
            char *frame = recv_frame(sock, &more);
            if (frame == NULL)
                break;
            frames++;
            free(payload);
            payload = frame;
        }
        if (frames == 2 && payload != NULL)
            handle(&st, topic, payload);
        else if (!stop_requested)
            fprintf(stderr, "skipped a message of %d frame(s); expected [topic, json]\n", frames);
        free(topic);
        free(payload);
    }
out:
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return rc;
}
