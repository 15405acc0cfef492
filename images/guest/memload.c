/*
 * memload: the guest workload of migconform (docs/guests.md).
 *
 * It owns N MiB of anonymous memory, one header + pattern per 4 KiB page, and keeps rewriting the pages
 * in a fixed round-robin order at a given rate. Because the order is fixed, one number -- the global write
 * count G -- says exactly what every page must hold: page i has been written
 *     expected_counter(i) = G / npages + (i < G % npages)
 * times, and its pattern is a pure function of (i, counter). A migration that loses a dirty page leaves
 * a page "stale" (counter too small); one that copies a page from after the switchover (or, for a
 * background snapshot, from after the snapshot started) leaves it "future"; a page mixing two versions or
 * overwritten from outside is "torn". Verification needs no record kept outside the guest.
 *
 * The daemon does everything itself, between two page writes, so no check ever sees a page half-written:
 *   memload daemon MIB RATE     fill, then rewrite RATE pages/s (0: none) and serve commands
 *   memload verify | status | gpa PAGE | rate RATE     ask the daemon, print its one-line answer
 * Commands travel through the FIFO /run/memload.cmd; each answer through a FIFO the client creates.
 * Page order, pattern and counters are defined once, here; docs/guests.md explains the checks they allow.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8u)
#define HEADER_WORDS 4u
#define MAGIC UINT64_C(0x6d656d6c6f616431) /* "memload1" */

/* The FIFOs live in $MEMLOAD_RUN_DIR (default /run), so the program can also be tried out on a host. */
static const char *run_dir(void)
{
    const char *dir = getenv("MEMLOAD_RUN_DIR");
    return dir && *dir ? dir : "/run";
}

static void cmd_fifo(char *buf, size_t size)
{
    snprintf(buf, size, "%s/memload.cmd", run_dir());
}

struct state {
    uint64_t *mem;
    uint64_t npages;
    volatile uint64_t generation; /* G: page writes done since the fill; volatile so RAM always holds it */
    uint64_t rate;       /* pages per second; 0 = no writes */
};

static uint64_t splitmix(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

static uint64_t pattern_word(uint64_t index, uint64_t counter, uint64_t k)
{
    return splitmix((index * UINT64_C(0x100000001b3)) ^ (counter << 20) ^ k);
}

static void write_page(uint64_t *page, uint64_t index, uint64_t counter)
{
    page[0] = MAGIC;
    page[1] = index;
    page[2] = counter;
    page[3] = ~(index ^ counter); /* header self-check */
    for (uint64_t k = HEADER_WORDS; k < WORDS; k++)
        page[k] = pattern_word(index, counter, k);
}

static uint64_t expected_counter(const struct state *s, uint64_t index)
{
    return s->generation / s->npages + (index < s->generation % s->npages ? 1 : 0);
}

/* The next page write in the fixed order: write number G+1 goes to page G % npages. */
static void step(struct state *s)
{
    uint64_t index = s->generation % s->npages;
    uint64_t *page = s->mem + index * WORDS;
    write_page(page, index, page[2] + 1);
    s->generation++;
}

static int page_torn(const uint64_t *page, uint64_t index)
{
    if (page[0] != MAGIC || page[1] != index || page[3] != ~(index ^ page[2]))
        return 1;
    for (uint64_t k = HEADER_WORDS; k < WORDS; k++)
        if (page[k] != pattern_word(index, page[2], k))
            return 1;
    return 0;
}

static void verify(const struct state *s, FILE *out)
{
    uint64_t bad = 0, torn = 0, stale = 0, future = 0;
    int64_t first_bad = -1;
    for (uint64_t i = 0; i < s->npages; i++) {
        const uint64_t *page = s->mem + i * WORDS;
        int is_bad = 1;
        if (page_torn(page, i))
            torn++;
        else if (page[2] < expected_counter(s, i))
            stale++;
        else if (page[2] > expected_counter(s, i))
            future++;
        else
            is_bad = 0;
        if (is_bad) {
            bad++;
            if (first_bad < 0)
                first_bad = (int64_t)i;
        }
    }
    fprintf(out, "pages_checked=%" PRIu64 " bad_pages=%" PRIu64 " first_bad=", s->npages, bad);
    if (first_bad < 0)
        fprintf(out, "none");
    else
        fprintf(out, "%" PRId64, first_bad);
    fprintf(out, " torn=%" PRIu64 " stale=%" PRIu64 " future=%" PRIu64 " generation=%" PRIu64 "\n", torn, stale,
            future, s->generation);
}

/*
 * Guest-physical address of a page, or with "state" of the 8-byte generation counter G (so the host can read G
 * from a paused VM's memory), from /proc/self/pagemap (needs root, which the guest shell is).
 */
static void gpa(const struct state *s, const char *what, FILE *out)
{
    uintptr_t va;
    if (strcmp(what, "state") == 0) {
        va = (uintptr_t)&s->generation;
    } else {
        uint64_t index = strtoull(what, NULL, 0);
        if (index >= s->npages) {
            fprintf(out, "error: page %" PRIu64 " out of range (npages=%" PRIu64 ")\n", index, s->npages);
            return;
        }
        va = (uintptr_t)(s->mem + index * WORDS);
    }
    uint64_t entry = 0;
    int fd = open("/proc/self/pagemap", O_RDONLY);
    if (fd < 0 || pread(fd, &entry, sizeof entry, (off_t)(va / PAGE * 8)) != (ssize_t)sizeof entry) {
        fprintf(out, "error: pagemap: %s\n", strerror(errno));
    } else if (!(entry >> 63) || (entry & ((UINT64_C(1) << 55) - 1)) == 0) {
        fprintf(out, "error: %s not present (pagemap entry %#" PRIx64 ")\n", what, entry);
    } else {
        uint64_t pfn = entry & ((UINT64_C(1) << 55) - 1);
        fprintf(out, "page=%s gpa=%#" PRIx64 "\n", what, pfn * PAGE + va % PAGE);
    }
    if (fd >= 0)
        close(fd);
}

static void serve(struct state *s, char *line)
{
    /* line: "<reply-fifo> <command> [arg]" */
    char *reply = strtok(line, " \n");
    char *cmd = strtok(NULL, " \n");
    char *arg = strtok(NULL, " \n");
    if (!reply || !cmd)
        return;
    FILE *out = fopen(reply, "w");
    if (!out)
        return;
    if (strcmp(cmd, "verify") == 0)
        verify(s, out);
    else if (strcmp(cmd, "status") == 0)
        fprintf(out, "generation=%" PRIu64 " pages=%" PRIu64 " rate=%" PRIu64 "\n", s->generation, s->npages,
                s->rate);
    else if (strcmp(cmd, "gpa") == 0 && arg)
        gpa(s, arg, out);
    else if (strcmp(cmd, "rate") == 0 && arg) {
        s->rate = strtoull(arg, NULL, 0);
        fprintf(out, "rate=%" PRIu64 "\n", s->rate);
    } else
        fprintf(out, "error: unknown command '%s'\n", cmd);
    fclose(out);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Static, not on the stack: its address (for "gpa state") stays valid for the daemon's life. */
static struct state the_state;

static int daemon_main(uint64_t mib, uint64_t rate)
{
    the_state.npages = mib * (1024u * 1024u / PAGE);
    the_state.rate = rate;
    if (the_state.npages == 0) {
        fprintf(stderr, "memload: memory must be at least 1 MiB\n");
        return 2;
    }
    size_t bytes = (size_t)(the_state.npages * PAGE);
    the_state.mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (the_state.mem == MAP_FAILED) {
        perror("memload: mmap");
        return 1;
    }
    /* 4 KiB pages that stay where they are, so a reported guest-physical address stays valid. */
    madvise(the_state.mem, bytes, MADV_NOHUGEPAGE);
    /* Resident and unmoving: the workload pages and the state (the guest has no swap, but pages can migrate). */
    if (mlockall(MCL_CURRENT | MCL_FUTURE) != 0)
        perror("memload: mlockall (continuing)");
    for (uint64_t i = 0; i < the_state.npages; i++)
        write_page(the_state.mem + i * WORDS, i, 0);

    char fifo[256];
    cmd_fifo(fifo, sizeof fifo);
    unlink(fifo);
    if (mkfifo(fifo, 0600) != 0) {
        fprintf(stderr, "memload: mkfifo %s: %s\n", fifo, strerror(errno));
        return 1;
    }
    /* O_RDWR: the FIFO never reports end-of-file between clients. */
    int cmd = open(fifo, O_RDWR | O_NONBLOCK);
    if (cmd < 0) {
        fprintf(stderr, "memload: open %s: %s\n", fifo, strerror(errno));
        return 1;
    }
    printf("memload: ready pages=%" PRIu64 " rate=%" PRIu64 "\n", the_state.npages, the_state.rate);
    fflush(stdout);

    char buf[512];
    size_t used = 0;
    uint64_t tick = now_ns();
    double owed = 0.0;
    for (;;) {
        struct pollfd p = {.fd = cmd, .events = POLLIN};
        /* 1 ms slices: fine-grained enough for rates up to ~10^5 pages/s without bursts of more than 1 ms. */
        if (poll(&p, 1, 1) > 0) {
            ssize_t n = read(cmd, buf + used, sizeof buf - 1 - used);
            if (n > 0) {
                used += (size_t)n;
                buf[used] = 0;
                char *nl;
                while ((nl = strchr(buf, '\n')) != NULL) {
                    *nl = 0;
                    serve(&the_state, buf);
                    used -= (size_t)(nl + 1 - buf);
                    memmove(buf, nl + 1, used + 1);
                }
                if (used == sizeof buf - 1)
                    used = 0; /* an overlong line: drop it */
            }
        }
        uint64_t t = now_ns();
        owed += (double)the_state.rate * (double)(t - tick) / 1e9;
        tick = t;
        if (owed > (double)the_state.rate / 10.0 + 1.0)
            owed = (double)the_state.rate / 10.0 + 1.0; /* never catch up more than 100 ms worth at once */
        while (owed >= 1.0) {
            step(&the_state);
            owed -= 1.0;
        }
    }
}

static int client_main(int argc, char **argv)
{
    char reply[256], fifo[256];
    snprintf(reply, sizeof reply, "%s/memload.reply.%d", run_dir(), (int)getpid());
    cmd_fifo(fifo, sizeof fifo);
    unlink(reply);
    if (mkfifo(reply, 0600) != 0) {
        perror("memload: mkfifo");
        return 1;
    }
    int cmd = open(fifo, O_WRONLY | O_NONBLOCK);
    if (cmd < 0) {
        fprintf(stderr, "memload: no daemon (%s: %s)\n", fifo, strerror(errno));
        unlink(reply);
        return 1;
    }
    char line[256];
    int len = snprintf(line, sizeof line, "%s %s %s\n", reply, argv[1], argc > 2 ? argv[2] : "");
    if (write(cmd, line, (size_t)len) != len) {
        perror("memload: write");
        unlink(reply);
        return 1;
    }
    close(cmd);
    FILE *in = fopen(reply, "r");
    unlink(reply);
    if (!in) {
        perror("memload: reply");
        return 1;
    }
    char answer[512];
    int status = 1;
    while (fgets(answer, sizeof answer, in)) {
        fputs(answer, stdout);
        status = strncmp(answer, "error", 5) == 0 ? 1 : 0;
    }
    fclose(in);
    return status;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "daemon") == 0)
        return daemon_main(strtoull(argv[2], NULL, 0), strtoull(argv[3], NULL, 0));
    if (argc >= 2 && strcmp(argv[1], "daemon") != 0)
        return client_main(argc, argv);
    fprintf(stderr, "usage: memload daemon MIB RATE | verify | status | gpa PAGE | rate RATE\n");
    return 2;
}
