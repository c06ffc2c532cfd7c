//go:build linux

package proxy

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/holo/wsgate/internal/netpoll"
)

// blackhole returns a loopback address whose listener never answers a new
// connection: its accept queue is full, so the kernel drops the SYNs.
func blackhole(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*syscall.SockaddrInet4).Port))
	for range 8 {
		c, err := net.DialTimeout("tcp", ap.String(), 100*time.Millisecond)
		if err != nil {
			return ap // the queue is full
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatal("the listener's accept queue never filled")
	return ap
}

// TestDialAny: an address that never answers gets its share of the dial's
// time, not all of it, and the next address is dialed; with no other, the
// dial fails as a timeout (the handshake's 504).
func TestDialAny(t *testing.T) {
	pl, err := netpoll.New(2)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	hole := blackhole(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	good := ln.Addr().(*net.TCPAddr).AddrPort()

	// Without shares the first address would take all of it, and the
	// second would not be dialed.
	ctx, cancel := context.WithTimeout(context.Background(), 4200*time.Millisecond)
	defer cancel()
	c, err := dialAny(ctx, pl, []netip.AddrPort{hole, good}, 0)
	if err != nil {
		t.Fatalf("dial with an address that answers: %v", err)
	}
	if got := c.RemoteAddr().String(); got != good.String() {
		t.Errorf("connected to %s, want %s", got, good)
	}
	c.Close()

	ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if c, err := dialAny(ctx, pl, []netip.AddrPort{hole}, 0); err == nil || !isTimeout(err) {
		t.Fatalf("dial of an address that never answers: %v, %v; want a timeout", c, err)
	}
}
