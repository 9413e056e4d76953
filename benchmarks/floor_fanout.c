/* The kernel floor of forwarding at a given load (issue #14 deliverables 5 and 6).
 *
 * A bare fan-out: one UDP socket, a blocking recvmmsg (MSG_WAITFORONE: it returns as soon as
 * one datagram is in, with whatever else is queued), then one sendmmsg of N copies of each
 * datagram to N destinations. No crypto, no routing, no Python: what any forwarder on this
 * kernel pays per packet at the same load. benchmarks/bench_ordinary.py builds it with gcc,
 * feeds it, and reads its CPU time from /proc.
 *
 *   floor_fanout PORT DEST_PORT...      (all on 127.0.0.1; SIGTERM prints the forwarded count)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define MAX_DEST 16
#define SLOT 2048

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv) {
    if (argc < 3 || argc - 2 > MAX_DEST) {
        fprintf(stderr, "usage: %s PORT DEST_PORT... (at most %d destinations)\n", argv[0], MAX_DEST);
        return 2;
    }
    int ndest = argc - 2;
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    me.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct sockaddr_in dest[MAX_DEST];
    for (int d = 0; d < ndest; d++) {
        memset(&dest[d], 0, sizeof dest[d]);
        dest[d].sin_family = AF_INET;
        dest[d].sin_port = htons(atoi(argv[2 + d]));
        dest[d].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&me, sizeof me) < 0) {
        perror("floor_fanout: socket");
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_term};  /* no SA_RESTART: recvmmsg returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    static char bufs[BATCH][SLOT];
    static struct iovec in_iov[BATCH], out_iov[BATCH * MAX_DEST];
    static struct mmsghdr in[BATCH], out[BATCH * MAX_DEST];
    for (int i = 0; i < BATCH; i++) {
        in_iov[i].iov_base = bufs[i];
        in_iov[i].iov_len = SLOT;
        in[i].msg_hdr.msg_iov = &in_iov[i];
        in[i].msg_hdr.msg_iovlen = 1;
    }
    unsigned long long forwarded = 0;
    printf("ready\n");
    fflush(stdout);
    while (!stop) {
        int n = recvmmsg(fd, in, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("floor_fanout: recvmmsg");
            break;
        }
        int m = 0;
        for (int i = 0; i < n; i++)
            for (int d = 0; d < ndest; d++, m++) {
                out_iov[m].iov_base = bufs[i];
                out_iov[m].iov_len = in[i].msg_len;
                memset(&out[m].msg_hdr, 0, sizeof out[m].msg_hdr);
                out[m].msg_hdr.msg_name = &dest[d];
                out[m].msg_hdr.msg_namelen = sizeof dest[d];
                out[m].msg_hdr.msg_iov = &out_iov[m];
                out[m].msg_hdr.msg_iovlen = 1;
            }
        for (int sent = 0; sent < m;) {
            int k = sendmmsg(fd, out + sent, m - sent, 0);
            if (k < 0) {
                if (errno == EINTR) continue;
                break;
            }
            sent += k;
            forwarded += k;
        }
    }
    printf("forwarded %llu\n", forwarded);
    return 0;
}
