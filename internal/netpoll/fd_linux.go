package netpoll

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
)

// Own takes a connected socket away from the Go runtime: it returns a
// duplicate of c's descriptor, non-blocking like c's and close-on-exec, and
// closes c, which takes the runtime's registration and timers with it. The
// caller then owns the descriptor: it reads and writes it without the
// runtime, waits for it with Wait and Block, and closes it with Close. c
// must be a plain socket (*net.TCPConn, *net.UnixConn); when Own fails, c
// is left as it was.
func Own(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("netpoll: own: %T is not a socket", c)
	}
	fd, err := dup(sc)
	if err != nil {
		return -1, fmt.Errorf("netpoll: own: %w", err)
	}
	_ = c.Close()
	return fd, nil
}

// Shutdown ends an owned socket's connection without releasing its
// descriptor: the peer sees it end, writes fail, reads return what was
// received and then EOF, and a goroutine blocked on it returns.
func Shutdown(fd int) {
	_ = sysShutdown(fd, syscall.SHUT_RDWR)
}

// Close closes an owned descriptor.
func Close(fd int) {
	_ = sysClose(fd)
}

// dup returns a duplicate of sc's descriptor, close-on-exec, sharing its
// file status (non-blocking).
func dup(sc syscall.Conn) (int, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, errno := -1, syscall.Errno(0)
	if err := rc.Control(func(f uintptr) {
		r, _, e := syscall.Syscall(syscall.SYS_FCNTL, f, syscall.F_DUPFD_CLOEXEC, 0)
		fd, errno = int(r), e
	}); err != nil {
		return -1, err
	}
	if errno != 0 {
		return -1, os.NewSyscallError("fcntl", errno)
	}
	return fd, nil
}

// peerAddr is an accepted peer's address from its socket address's parts:
// an IPv4 peer of an IPv6 socket as IPv4, a link-local one with its zone.
func peerAddr(ip netip.Addr, port uint16, scope uint32) netip.AddrPort {
	ip = ip.Unmap()
	if scope != 0 && ip.Is6() {
		ip = ip.WithZone(strconv.FormatUint(uint64(scope), 10))
	}
	return netip.AddrPortFrom(ip, port)
}
