/*
 * An independent Modbus slave for the tests (issue 13): libmodbus, not pymodbus and not the project's code,
 * serves a register table read from a file, over Modbus TCP or Modbus RTU on a serial device (a socat pty).
 *
 * Written for this project; it only calls the public libmodbus API (Debian libmodbus-dev). Built by the test
 * fixture in tests/independent_slave/__init__.py with gcc into a temporary directory.
 *
 *   slave --table FILE (--tcp PORT | --rtu DEVICE [--baud N] [--parity N|E|O] [--stop 1|2])
 *         [--unit N] [--refuse-writes CODE] [--debug]
 *
 * FILE has one register per line: "h ADDRESS VALUE" (holding, FC 03) or "i ADDRESS VALUE" (input, FC 04),
 * numbers in decimal or 0x hex; '#' starts a comment. Each table is served from its lowest to its highest
 * address (registers in between read 0); a read outside that span, or of a table with no lines, answers
 * exception 2 as libmodbus does. Requests libmodbus does not implement answer exception 1.
 * --tcp 0 picks a free port. When the slave listens it prints "READY <port-or-device>" on stdout.
 * --refuse-writes CODE answers every write function code (5, 6, 15, 16, 22, 23) with that exception code
 * instead of storing, as a meter refuses writes to its measurements.
 * RTU answers only --unit (default 1); Modbus TCP answers every unit id, as libmodbus does.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <modbus.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CLIENTS 32

static volatile sig_atomic_t stopping = 0;

static void on_signal(int sig) {
    (void)sig;
    stopping = 1;
}

static void die(const char *what) {
    fprintf(stderr, "slave: %s\n", what);
    exit(2);
}

typedef struct {
    int count;
    int capacity;
    int *address;
    int *value;
    int low;
    int high;
} table_t;

static void table_add(table_t *t, long address, long value, int line) {
    if (address < 0 || address > 0xFFFF || value < 0 || value > 0xFFFF) {
        fprintf(stderr, "slave: table line %d: address and value must be 0..65535\n", line);
        exit(2);
    }
    if (t->count == t->capacity) {
        t->capacity = t->capacity ? 2 * t->capacity : 256;
        t->address = realloc(t->address, sizeof(int) * (size_t)t->capacity);
        t->value = realloc(t->value, sizeof(int) * (size_t)t->capacity);
        if (!t->address || !t->value) die("out of memory");
    }
    t->address[t->count] = (int)address;
    t->value[t->count] = (int)value;
    if (t->count == 0 || address < t->low) t->low = (int)address;
    if (t->count == 0 || address > t->high) t->high = (int)address;
    t->count++;
}

static void load_table(const char *path, table_t *holding, table_t *input) {
    FILE *f = fopen(path, "r");
    if (!f) die("cannot open the table file");
    char buf[256];
    int line = 0;
    while (fgets(buf, sizeof buf, f)) {
        line++;
        char *hash = strchr(buf, '#');
        if (hash) *hash = '\0';
        char kind;
        char a[64], v[64];
        int n = sscanf(buf, " %c %63s %63s", &kind, a, v);
        if (n <= 0) continue;
        if (n != 3 || (kind != 'h' && kind != 'i')) {
            fprintf(stderr, "slave: table line %d: use \"h|i ADDRESS VALUE\"\n", line);
            exit(2);
        }
        char *end1, *end2;
        long address = strtol(a, &end1, 0), value = strtol(v, &end2, 0);
        if (*end1 || *end2) {
            fprintf(stderr, "slave: table line %d: not a number\n", line);
            exit(2);
        }
        table_add(kind == 'h' ? holding : input, address, value, line);
    }
    fclose(f);
}

static modbus_mapping_t *make_mapping(const table_t *holding, const table_t *input) {
    int h_start = holding->count ? holding->low : 0, h_n = holding->count ? holding->high - holding->low + 1 : 0;
    int i_start = input->count ? input->low : 0, i_n = input->count ? input->high - input->low + 1 : 0;
    modbus_mapping_t *m = modbus_mapping_new_start_address(0, 0, 0, 0, (unsigned)h_start, (unsigned)h_n,
                                                           (unsigned)i_start, (unsigned)i_n);
    if (!m) die("cannot allocate the register mapping");
    for (int k = 0; k < holding->count; k++) m->tab_registers[holding->address[k] - h_start] = (uint16_t)holding->value[k];
    for (int k = 0; k < input->count; k++) m->tab_input_registers[input->address[k] - i_start] = (uint16_t)input->value[k];
    return m;
}

static int is_write(int function) {
    return function == 5 || function == 6 || function == 15 || function == 16 || function == 22 || function == 23;
}

/* Answer one request that modbus_receive returned (length rc). */
static void answer(modbus_t *ctx, modbus_mapping_t *m, const uint8_t *req, int rc, int refuse_writes) {
    int function = req[modbus_get_header_length(ctx)];
    if (refuse_writes && is_write(function)) {
        modbus_reply_exception(ctx, req, (unsigned)refuse_writes);
        return;
    }
    modbus_reply(ctx, req, rc, m);
}

static int serve_rtu(modbus_t *ctx, modbus_mapping_t *m, const char *device, int refuse_writes) {
    if (modbus_connect(ctx) == -1) {
        fprintf(stderr, "slave: cannot open %s: %s\n", device, modbus_strerror(errno));
        return 2;
    }
    /* Wake up now and then so SIGTERM ends the loop even on a silent line. */
    modbus_set_indication_timeout(ctx, 0, 200000);
    printf("READY %s\n", device);
    fflush(stdout);
    uint8_t req[MODBUS_RTU_MAX_ADU_LENGTH];
    while (!stopping) {
        int rc = modbus_receive(ctx, req);
        if (rc > 0) answer(ctx, m, req, rc, refuse_writes);
        /* rc 0: a frame for another unit, ignored; -1: timeout, bad CRC or a broken frame: libmodbus
         * flushed the line, wait for the next request. */
    }
    return 0;
}

static int serve_tcp(modbus_t *ctx, modbus_mapping_t *m, int refuse_writes) {
    int server = modbus_tcp_listen(ctx, MAX_CLIENTS);
    if (server == -1) {
        fprintf(stderr, "slave: cannot listen: %s\n", modbus_strerror(errno));
        return 2;
    }
    struct sockaddr_in bound;
    socklen_t len = sizeof bound;
    if (getsockname(server, (struct sockaddr *)&bound, &len) == -1) die("getsockname failed");
    printf("READY %d\n", ntohs(bound.sin_port));
    fflush(stdout);

    int clients[MAX_CLIENTS];
    int n_clients = 0;
    uint8_t req[MODBUS_TCP_MAX_ADU_LENGTH];
    while (!stopping) {
        fd_set readable;
        FD_ZERO(&readable);
        FD_SET(server, &readable);
        int top = server;
        for (int k = 0; k < n_clients; k++) {
            FD_SET(clients[k], &readable);
            if (clients[k] > top) top = clients[k];
        }
        struct timeval tick = {0, 200000};
        int ready = select(top + 1, &readable, NULL, NULL, &tick);
        if (ready <= 0) continue;
        if (FD_ISSET(server, &readable)) {
            int fd = accept(server, NULL, NULL);
            if (fd >= 0 && n_clients < MAX_CLIENTS) clients[n_clients++] = fd;
            else if (fd >= 0) close(fd);
        }
        for (int k = 0; k < n_clients; k++) {
            if (!FD_ISSET(clients[k], &readable)) continue;
            modbus_set_socket(ctx, clients[k]);
            int rc = modbus_receive(ctx, req);
            if (rc > 0) {
                answer(ctx, m, req, rc, refuse_writes);
            } else if (rc == -1) {
                /* The client closed the connection or sent a broken frame: drop it, as libmodbus's
                 * own multi-client example does. */
                close(clients[k]);
                clients[k] = clients[--n_clients];
                k--;
            }
        }
    }
    for (int k = 0; k < n_clients; k++) close(clients[k]);
    close(server);
    return 0;
}

int main(int argc, char **argv) {
    const char *table_path = NULL, *device = NULL;
    int tcp_port = -1, baud = 9600, stop_bits = 1, unit = 1, refuse_writes = 0, debug = 0;
    char parity = 'N';
    for (int k = 1; k < argc; k++) {
        const char *arg = argv[k];
        const char *next = k + 1 < argc ? argv[k + 1] : NULL;
        if (!strcmp(arg, "--debug")) { debug = 1; continue; }
        if (!next) die("every option but --debug takes a value");
        if (!strcmp(arg, "--table")) table_path = next;
        else if (!strcmp(arg, "--tcp")) tcp_port = atoi(next);
        else if (!strcmp(arg, "--rtu")) device = next;
        else if (!strcmp(arg, "--baud")) baud = atoi(next);
        else if (!strcmp(arg, "--parity")) parity = next[0];
        else if (!strcmp(arg, "--stop")) stop_bits = atoi(next);
        else if (!strcmp(arg, "--unit")) unit = atoi(next);
        else if (!strcmp(arg, "--refuse-writes")) refuse_writes = atoi(next);
        else die("unknown option");
        k++;
    }
    if (!table_path || (tcp_port < 0) == (device == NULL)) die("use --table FILE and one of --tcp PORT, --rtu DEVICE");
    if (unit < 1 || unit > 247) die("--unit must be 1..247");

    table_t holding = {0}, input = {0};
    load_table(table_path, &holding, &input);
    modbus_mapping_t *m = make_mapping(&holding, &input);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;   /* no SA_RESTART: a blocking select returns EINTR and the loop ends */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    modbus_t *ctx = device ? modbus_new_rtu(device, baud, parity, 8, stop_bits)
                           : modbus_new_tcp("127.0.0.1", tcp_port);
    if (!ctx) die("cannot create the libmodbus context");
    modbus_set_debug(ctx, debug);
    if (modbus_set_slave(ctx, unit) == -1) die("invalid unit id");
    int status = device ? serve_rtu(ctx, m, device, refuse_writes) : serve_tcp(ctx, m, refuse_writes);
    modbus_close(ctx);
    modbus_free(ctx);
    modbus_mapping_free(m);
    return status;
}
