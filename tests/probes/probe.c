// loong-probe: tries exactly one escape from inside a sandbox and prints the outcome as one
// line: "ok" when the attempt succeeded, or the errno's name ("EACCES") when the kernel
// refused it. A signal kills the process instead (the caller sees 128 + signal). Modeled on
// bubblewrap's tests/try-syscall.c: where possible, "not blocked" shows as a harmless result.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/perf_event.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <unistd.h>

static int result(long rc) {
    if (rc < 0) {
        const char *n = strerrorname_np(errno);
        printf("%s\n", n ? n : "EUNKNOWN");
    } else {
        printf("ok\n");
    }
    fflush(stdout);
    return 0;
}

static long tcp(int connect_, const char *host, int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    return connect_ ? connect(s, (void *)&a, sizeof a) : bind(s, (void *)&a, sizeof a);
}

// The network escapes below take "GRANTED OTHER": a plain connect to 127.0.0.1:GRANTED first
// (the sandbox's own positive control, printed as "granted=ok" or "granted=ERRNO"), then the
// attempt on 127.0.0.1:OTHER, whose outcome is the second line. The test's listener on OTHER
// shows from the host side whether anything arrived.
static void granted(const char *port) {
    long rc = tcp(1, "127.0.0.1", atoi(port));
    const char *n = rc < 0 ? strerrorname_np(errno) : "ok";
    printf("granted=%s\n", n ? n : "EUNKNOWN");
    fflush(stdout);
}

static struct sockaddr_in loopback(const char *port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    return a;
}

// A stream socket of protocol `proto` connecting to 127.0.0.1:port (IPv4, or IPv6 through the
// v4-mapped address).
static long stream_connect(int v6, int proto, const char *port) {
    int s = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, proto);
    if (s < 0) return -1;
    if (!v6) {
        struct sockaddr_in a = loopback(port);
        return connect(s, (void *)&a, sizeof a);
    }
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(atoi(port))};
    inet_pton(AF_INET6, "::ffff:127.0.0.1", &a.sin6_addr);
    return connect(s, (void *)&a, sizeof a);
}

// Connect-on-send: TCP fast open through sendto, sendmsg or sendmmsg (kind 't', 'm', 'M').
static long fastopen(char kind, const char *port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return -1;
    struct sockaddr_in a = loopback(port);
    struct iovec v = {"x", 1};
    struct msghdr h = {.msg_name = &a, .msg_namelen = sizeof a, .msg_iov = &v, .msg_iovlen = 1};
    if (kind == 't') return sendto(s, "x", 1, MSG_FASTOPEN, (void *)&a, sizeof a);
    if (kind == 'm') return sendmsg(s, &h, MSG_FASTOPEN);
    struct mmsghdr mm = {.msg_hdr = h};
    return sendmmsg(s, &mm, 1, MSG_FASTOPEN);
}

// A TCP socket option on a fresh TCP socket; for TCP_FASTOPEN_CONNECT, then connect and send.
static long tcp_option(int opt, const char *port) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (s < 0) return -1;
    if (setsockopt(s, IPPROTO_TCP, opt, &one, sizeof one) < 0) return -1;
    if (opt != TCP_FASTOPEN_CONNECT) return 0;
    struct sockaddr_in a = loopback(port);
    if (connect(s, (void *)&a, sizeof a) < 0) return -1;
    return write(s, "x", 1);
}

// An upper layer (TCP_ULP `ulp`, e.g. "smc") on a fresh TCP socket, then a connect to `port`.
static long tcp_ulp(const char *ulp, const char *port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return -1;
    if (setsockopt(s, IPPROTO_TCP, TCP_ULP, ulp, strlen(ulp)) < 0) return -1;
    struct sockaddr_in a = loopback(port);
    return connect(s, (void *)&a, sizeof a);
}

// listen() on an unbound socket (which autobinds an ephemeral port on every address); on
// success prints "listening PORT" and stays up for `secs` seconds.
static int listen_unbound(int v6, int secs) {
    int s = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    if (s < 0 || listen(s, 8) < 0) return result(-1);
    struct sockaddr_in6 a;
    socklen_t len = sizeof a;
    if (getsockname(s, (void *)&a, &len) < 0) return result(-1);
    printf("listening %d\n", ntohs(a.sin6_port));  // sin_port and sin6_port share the offset
    fflush(stdout);
    sleep(secs);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: loong-probe MODE [ARGS]\n");
        return 2;
    }
    const char *m = argv[1];
    const char *a1 = argc > 2 ? argv[2] : "";
    const char *a2 = argc > 3 ? argv[3] : "";
    if (!strcmp(m, "read")) {  // open a path for reading and read a byte
        int fd = open(a1, O_RDONLY);
        if (fd < 0) return result(-1);
        char c;
        return result(read(fd, &c, 1) < 0 ? -1 : 0);
    }
    if (!strcmp(m, "create")) return result(open(a1, O_WRONLY | O_CREAT | O_TRUNC, 0644));
    if (!strcmp(m, "open-rw")) return result(open(a1, O_RDWR));
    if (!strcmp(m, "symlink-read")) {  // a1: link to create, a2: its target
        if (symlink(a2, a1) < 0) return result(-1);
        return result(open(a1, O_RDONLY));
    }
    if (!strcmp(m, "link")) return result(link(a1, a2));
    if (!strcmp(m, "rename")) return result(rename(a1, a2));
    if (!strcmp(m, "tcp-connect")) return result(tcp(1, a1, atoi(a2)));
    if (!strcmp(m, "tcp-bind")) return result(tcp(0, "127.0.0.1", atoi(a1)));
    if (!strcmp(m, "fastopen-sendto") || !strcmp(m, "fastopen-sendmsg") || !strcmp(m, "fastopen-sendmmsg")) {
        granted(a1);
        char kind = !strcmp(m, "fastopen-sendto") ? 't' : !strcmp(m, "fastopen-sendmsg") ? 'm' : 'M';
        return result(fastopen(kind, a2));
    }
    if (!strcmp(m, "fastopen-connect")) {  // TCP_FASTOPEN_CONNECT, then connect and send
        granted(a1);
        return result(tcp_option(TCP_FASTOPEN_CONNECT, a2));
    }
    if (!strcmp(m, "tcp-option")) return result(tcp_option(atoi(a1), ""));  // a1: optname
    if (!strcmp(m, "tcp-ulp")) {  // a1 granted port, a2 other port, argv[4] the ULP's name
        granted(a1);
        return result(tcp_ulp(argc > 4 ? argv[4] : "smc", a2));
    }
    if (!strcmp(m, "proto-connect") || !strcmp(m, "proto6-connect")) {
        // a1 granted port, a2 other port, argv[4] the stream socket's protocol number
        granted(a1);
        return result(stream_connect(m[5] == '6', argc > 4 ? atoi(argv[4]) : 0, a2));
    }
    if (!strcmp(m, "tcp-listen") || !strcmp(m, "tcp6-listen")) return listen_unbound(m[3] == '6', atoi(a1));
    if (!strcmp(m, "tcp-accept")) {  // accept4 on a fresh socket: EINVAL when reachable
        int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (s < 0) return result(-1);
        return result(accept4(s, NULL, NULL, 0));
    }
    if (!strcmp(m, "ia32-socket")) {  // socketcall(SYS_SOCKET, AF_INET, SOCK_STREAM, 0) via int 0x80
        int *args = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
        if (args == MAP_FAILED) return result(-1);
        args[0] = AF_INET;
        args[1] = SOCK_STREAM;
        args[2] = 0;
        long rc;
        __asm__ volatile("int $0x80" : "=a"(rc) : "a"(102 /* socketcall */), "b"(1 /* SYS_SOCKET */), "c"((long)args) : "memory");
        if (rc < 0) errno = -rc;
        return result(rc);
    }
    if (!strcmp(m, "udp-send")) {
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        if (s < 0) return result(-1);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(a1))};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        return result(sendto(s, "x", 1, 0, (void *)&a, sizeof a));
    }
    if (!strcmp(m, "netlink")) return result(socket(AF_NETLINK, SOCK_RAW, 0));
    if (!strcmp(m, "abstract-connect") || !strcmp(m, "unix-connect")) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (s < 0) return result(-1);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        socklen_t len;
        if (m[0] == 'a') {  // abstract: leading NUL
            strncpy(a.sun_path + 1, a1, sizeof a.sun_path - 2);
            len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(a1);
        } else {
            strncpy(a.sun_path, a1, sizeof a.sun_path - 1);
            len = sizeof a;
        }
        return result(connect(s, (void *)&a, len));
    }
    if (!strcmp(m, "abstract-listen") || !strcmp(m, "abstract-self")) {
        // listen on abstract a1; "-self" then connects to itself, "-listen" waits a2 seconds
        int l = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strncpy(a.sun_path + 1, a1, sizeof a.sun_path - 2);
        socklen_t len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(a1);
        if (l < 0 || bind(l, (void *)&a, len) < 0 || listen(l, 8) < 0) return result(-1);
        if (m[9] == 's') {
            int c = socket(AF_UNIX, SOCK_STREAM, 0);
            return result(connect(c, (void *)&a, len));
        }
        printf("listening\n");
        fflush(stdout);
        sleep(atoi(a2));
        return 0;
    }
    if (!strcmp(m, "abstract-dgram")) {
        // bind a datagram socket to abstract a1; on success print "bound", then print what
        // arrives within a2 seconds ("received DATA", or "nothing")
        int d = socket(AF_UNIX, SOCK_DGRAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strncpy(a.sun_path + 1, a1, sizeof a.sun_path - 2);
        socklen_t len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(a1);
        if (d < 0 || bind(d, (void *)&a, len) < 0) return result(-1);
        printf("bound\n");
        fflush(stdout);
        struct timeval t = {.tv_sec = atoi(a2)};
        setsockopt(d, SOL_SOCKET, SO_RCVTIMEO, &t, sizeof t);
        char buf[64] = {0};
        long n = recv(d, buf, sizeof buf - 1, 0);
        printf(n > 0 ? "received %s\n" : "nothing\n", buf);
        fflush(stdout);
        return 0;
    }
    if (!strcmp(m, "kill")) return result(kill(atoi(a1), 0));
    if (!strcmp(m, "ptrace")) return result(ptrace(PTRACE_ATTACH, atoi(a1), 0, 0));
    if (!strcmp(m, "vmread")) {
        char buf[8];
        struct iovec l = {buf, sizeof buf}, r = {(void *)0x400000, sizeof buf};
        return result(process_vm_readv(atoi(a1), &l, 1, &r, 1, 0));
    }
    if (!strcmp(m, "list-fds")) {  // every open descriptor, "0 1 2"
        for (int fd = 0; fd < 1024; fd++)
            if (fcntl(fd, F_GETFD) >= 0) printf("%d ", fd);
        printf("\n");
        return 0;
    }
    if (!strcmp(m, "unshare-mount")) {
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0) return result(-1);
        return result(mount("none", "/tmp", "tmpfs", 0, NULL));
    }
    if (!strcmp(m, "mount")) return result(mount("none", "/tmp", "tmpfs", 0, NULL));
    // The new mount API, one call each (raw numbers: the headers of older libcs lack them).
    // A clone of the tree at a1 (detached; freed with its descriptor).
    if (!strcmp(m, "open-tree")) return result(syscall(SYS_open_tree, AT_FDCWD, a1, 1 /* OPEN_TREE_CLONE */));
    if (!strcmp(m, "setattr-rw")) {  // clears read-only on the mount whose root is a1
        struct { unsigned long long set, clr, propagation, userns_fd; } at = {0, 1 /* MOUNT_ATTR_RDONLY */, 0, 0};
        return result(syscall(SYS_mount_setattr, AT_FDCWD, a1, 0, &at, sizeof at));
    }
    if (!strcmp(m, "fsopen")) return result(syscall(SYS_fsopen, "tmpfs", 1 /* FSOPEN_CLOEXEC */));
    if (!strcmp(m, "fspick")) return result(syscall(SYS_fspick, AT_FDCWD, a1, 1 /* FSPICK_CLOEXEC */));
    // Invalid flags: root's answer is EINVAL after the permission check, so nothing moves.
    if (!strcmp(m, "move-mount")) return result(syscall(SYS_move_mount, AT_FDCWD, "/", AT_FDCWD, "/", 0x80000000u));
    // No context (-1) and no key: EINVAL once past the filter; fsconfig checks no capability.
    if (!strcmp(m, "fsconfig")) return result(syscall(SYS_fsconfig, -1, 6 /* FSCONFIG_CMD_CREATE */, NULL, NULL, 0));
    if (!strcmp(m, "chroot")) return result(chroot("/"));
    if (!strcmp(m, "setns")) {
        int fd = open("/proc/self/ns/net", O_RDONLY);  // setns into our own: works unconfined as root
        if (fd < 0) return result(-1);
        return result(setns(fd, CLONE_NEWNET));
    }
    if (!strcmp(m, "keyctl")) return result(syscall(SYS_keyctl, 1 /* JOIN_SESSION_KEYRING */, 0));
    if (!strcmp(m, "bpf")) {
        union bpf_attr at;
        memset(&at, 0, sizeof at);
        at.map_type = BPF_MAP_TYPE_ARRAY;
        at.key_size = 4;
        at.value_size = 4;
        at.max_entries = 1;
        return result(syscall(SYS_bpf, BPF_MAP_CREATE, &at, sizeof at));
    }
    if (!strcmp(m, "io-uring")) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        return result(syscall(SYS_io_uring_setup, 1, &p));
    }
    if (!strcmp(m, "userfaultfd")) return result(syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
    if (!strcmp(m, "perf")) {
        struct perf_event_attr pe;
        memset(&pe, 0, sizeof pe);
        pe.type = PERF_TYPE_SOFTWARE;
        pe.size = sizeof pe;
        pe.config = PERF_COUNT_SW_CPU_CLOCK;
        pe.exclude_kernel = 1;
        return result(syscall(SYS_perf_event_open, &pe, 0, -1, -1, 0));
    }
    if (!strcmp(m, "clone-newuser")) {
        long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (pid == 0) _exit(0);
        if (pid > 0) waitpid(pid, NULL, 0);
        return result(pid);
    }
    if (!strcmp(m, "clone3")) return result(syscall(SYS_clone3, NULL, 0));  // EINVAL when reachable
    if (!strcmp(m, "x32")) return result(syscall(SYS_getpid | 0x40000000));
    if (!strcmp(m, "euid")) {  // prints the effective uid (run through a setuid copy)
        printf("euid=%d\n", geteuid());
        return 0;
    }
    if (!strcmp(m, "exec")) {  // exec a1 with the rest of the arguments
        execv(a1, argv + 2);
        return result(-1);
    }
    if (!strcmp(m, "forkbomb")) {  // fork up to N children; print how many succeeded and the error
        int n = atoi(a1), made = 0, err = 0;
        pid_t kids[4096];
        if (n > 4096) n = 4096;
        for (; made < n; made++) {
            pid_t p = fork();
            if (p < 0) { err = errno; break; }
            if (p == 0) { pause(); _exit(0); }
            kids[made] = p;
        }
        printf("forked=%d %s\n", made, made < n ? strerrorname_np(err) : "ok");
        fflush(stdout);
        for (int i = 0; i < made; i++) kill(kids[i], SIGKILL);
        for (int i = 0; i < made; i++) waitpid(kids[i], NULL, 0);
        return 0;
    }
    if (!strcmp(m, "alloc")) {  // a1 MiB; a2 = "touch" to write every page
        size_t n = (size_t)atol(a1) << 20;
        char *p = malloc(n);
        if (!p) return result(-1);
        if (!strcmp(a2, "touch"))
            for (size_t i = 0; i < n; i += 4096) p[i] = 1;
        return result(0);
    }
    if (!strcmp(m, "fds")) {  // open up to N descriptors
        int n = atoi(a1), i;
        for (i = 0; i < n; i++)
            if (open("/dev/null", O_RDONLY) < 0) break;
        printf("opened=%d %s\n", i, i < n ? strerrorname_np(errno) : "ok");
        return 0;
    }
    if (!strcmp(m, "bigfile")) {  // write a2 MiB to a1
        int fd = open(a1, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) return result(-1);
        static char buf[1 << 20];
        for (long i = 0; i < atol(a2); i++)
            if (write(fd, buf, sizeof buf) < 0) return result(-1);
        return result(0);
    }
    if (!strcmp(m, "spin")) for (;;) {}
    if (!strcmp(m, "spin-child")) {  // a grandchild spins; report how it ended
        pid_t p = fork();
        if (p < 0) return result(-1);
        if (p == 0) for (;;) {}
        int st;
        waitpid(p, &st, 0);
        printf(WIFSIGNALED(st) ? "child-signal=%d\n" : "child-exit=%d\n", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        return 0;
    }
    if (!strcmp(m, "flood")) {  // write to stdout forever
        static char buf[65536];
        memset(buf, 'x', sizeof buf);
        for (;;)
            if (write(1, buf, sizeof buf) < 0) return result(-1);
    }
    if (!strcmp(m, "status")) {  // NoNewPrivs and Seccomp lines of /proc/self/status
        FILE *f = fopen("/proc/self/status", "r");
        if (!f) return result(-1);
        char line[256];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "NoNewPrivs:", 11) || !strncmp(line, "Seccomp:", 8)) fputs(line, stdout);
        return 0;
    }
    fprintf(stderr, "loong-probe: unknown mode %s\n", m);
    return 2;
}
