//go:build linux

package netpoll

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"
)

// listen returns a TCP listener on addr that the test closes.
func listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func addrPort(t *testing.T, ln net.Listener) netip.AddrPort {
	t.Helper()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// accept returns the next connection of ln, which the test closes.
func accept(t *testing.T, ln net.Listener) net.Conn {
	t.Helper()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- c
	}()
	c, ok := <-ch
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dialTCP(t *testing.T, p *Poller, ap netip.AddrPort, keepAlive time.Duration) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.DialTCP(ctx, ap, keepAlive)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestDialTCP dials IPv4 and IPv6 loopback listeners and exchanges bytes
// both ways; Close ends the peer's reads.
func TestDialTCP(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				t.Skipf("no %s here: %v", addr, err)
			}
			defer ln.Close()
			p := newPoller(t, 2)
			c := dialTCP(t, p, addrPort(t, ln), 0)
			peer := accept(t, ln)
			if got, want := c.RemoteAddr().String(), ln.Addr().String(); got != want {
				t.Errorf("RemoteAddr %s, want %s", got, want)
			}
			if got, want := c.LocalAddr().String(), peer.RemoteAddr().String(); got != want {
				t.Errorf("LocalAddr %s, want the peer's view %s", got, want)
			}
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("peer read %q, %v", buf, err)
			}
			go peer.Write([]byte("pong")) // read below while it is on its way
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "pong" {
				t.Fatalf("read %q, %v", buf, err)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			peer.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := peer.Read(buf); err != io.EOF {
				t.Fatalf("peer read after Close: %d, %v; want EOF", n, err)
			}
		})
	}
}

// TestDialTCPRefused: nothing listens, the dial fails with the refusal.
func TestDialTCPRefused(t *testing.T) {
	ln := listen(t, "127.0.0.1:0")
	ap := addrPort(t, ln)
	ln.Close()
	p := newPoller(t, 2)
	c, err := p.DialTCP(context.Background(), ap, 0)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to a closed port: %v, %v; want ECONNREFUSED", c, err)
	}
}

// TestDialTCPClosedPoller: a poller that was closed registers nothing.
func TestDialTCPClosedPoller(t *testing.T) {
	ln := listen(t, "127.0.0.1:0")
	p, err := New(2)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.DialTCP(context.Background(), addrPort(t, ln), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("dial with a closed poller: %v, want ErrClosed", err)
	}
}

// TestConnSocketOptions: no Nagle delay; keepalive only when asked, with
// its period.
func TestConnSocketOptions(t *testing.T) {
	ln := listen(t, "127.0.0.1:0")
	p := newPoller(t, 2)
	for _, ka := range []time.Duration{0, 30 * time.Second} {
		c := dialTCP(t, p, addrPort(t, ln), ka)
		accept(t, ln)
		get := func(level, opt int) int {
			v, err := syscall.GetsockoptInt(c.FD(), level, opt)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		if v := get(syscall.IPPROTO_TCP, syscall.TCP_NODELAY); v != 1 {
			t.Errorf("keepalive %v: TCP_NODELAY %d, want 1", ka, v)
		}
		if on := get(syscall.SOL_SOCKET, syscall.SO_KEEPALIVE) != 0; on != (ka > 0) {
			t.Errorf("keepalive %v: SO_KEEPALIVE %v", ka, on)
		}
		if ka > 0 {
			if v := get(syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE); v != 30 {
				t.Errorf("TCP_KEEPIDLE %d, want 30", v)
			}
			if v := get(syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL); v != 30 {
				t.Errorf("TCP_KEEPINTVL %d, want 30", v)
			}
		}
	}
}

// TestConnDeadlines: a read past its deadline fails as a timeout, and a
// deadline set while a Read waits (as an upstream handshake's context
// ending does) wakes it.
func TestConnDeadlines(t *testing.T) {
	ln := listen(t, "127.0.0.1:0")
	p := newPoller(t, 2)
	c := dialTCP(t, p, addrPort(t, ln), 0)
	accept(t, ln) // never writes
	buf := make([]byte, 1)

	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := c.Read(buf)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}

	c.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(buf)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let it wait, most likely
	c.SetDeadline(time.Unix(1, 0))
	if err := within(t, done, "the waiting Read's return"); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("waiting read after a past deadline: %v, want a timeout", err)
	}
}

// TestHandover: bytes that arrived for the Conn before the handover, and
// that its reader had not seen, are the new owner's to read: its first
// Wait returns at once. Later bytes run its callback.
func TestHandover(t *testing.T) {
	ln := listen(t, "127.0.0.1:0")
	p := newPoller(t, 2)
	c := dialTCP(t, p, addrPort(t, ln), 0)
	peer := accept(t, ln)
	if _, err := peer.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); c.d.state.Load() != kicked; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the Conn was never told of the bytes")
		}
	}
	fd := c.FD()
	var d Desc
	ran := make(chan struct{}, 1)
	d.Init(fd, func() { ran <- struct{}{} })
	c.Handover(&d)
	if err := c.Close(); err != nil { // handed over: closes nothing
		t.Fatal(err)
	}
	if parked, err := p.Wait(&d); parked || err != nil {
		t.Fatalf("first Wait after the handover: parked %v, %v; want a look at the pending bytes", parked, err)
	}
	buf := make([]byte, 4)
	if n, err := syscall.Read(fd, buf); n != 1 || err != nil {
		t.Fatalf("read %d, %v; want the byte sent before the handover", n, err)
	}
	if parked, err := p.Wait(&d); !parked || err != nil {
		t.Fatalf("Wait: parked %v, %v", parked, err)
	}
	if _, err := peer.Write([]byte("b")); err != nil {
		t.Fatal(err)
	}
	within(t, ran, "the new owner's callback")
	p.Remove(&d)
	syscall.Close(fd)
}

// A dial waiting for a connect that does not come (the listener's accept
// queue is full, so its SYNs are dropped) fails when the poller closes:
// woken by the stop, it must not read the socket still connecting (SO_ERROR
// 0) as connected.
func TestDialTCPUnderClose(t *testing.T) {
	lfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(lfd)
	if err := syscall.Bind(lfd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(lfd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(lfd)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*syscall.SockaddrInet4).Port))
	p, err := New(2)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // fill the accept queue
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		c, err := p.DialTCP(ctx, ap, 0)
		cancel()
		if err == nil {
			defer c.Close()
		}
	}
	type result struct {
		c   *Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := p.DialTCP(ctx, ap, 0)
		done <- result{c, err}
	}()
	time.Sleep(200 * time.Millisecond) // the dial waits in Block
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err == nil {
		_, perr := syscall.Getpeername(r.c.FD())
		r.c.Close()
		t.Fatalf("DialTCP under Close returned a Conn (getpeername: %v), want ErrClosed", perr)
	}
	if !errors.Is(r.err, ErrClosed) {
		t.Errorf("DialTCP under Close: %v, want ErrClosed", r.err)
	}
}

// TestConnUseAfterClose: a Read or Write on a closed Conn answers
// net.ErrClosed, as a net.Conn does, and never reaches the descriptor,
// whose number the next socket most likely took (here, another Conn's):
// it used to read that connection's bytes and write into it.
func TestConnUseAfterClose(t *testing.T) {
	ln := listen(t, "127.0.0.1:0")
	p := newPoller(t, 2)
	ap := addrPort(t, ln)
	c := dialTCP(t, p, ap, 0)
	accept(t, ln)
	c.Close()
	c2 := dialTCP(t, p, ap, 0)
	peer2 := accept(t, ln)
	t.Logf("descriptor reused: %v", c2.FD() == c.FD())
	if _, err := peer2.Write([]byte("secret")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	buf := make([]byte, 16)
	if n, err := c.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read on the closed Conn: %q, %v; want net.ErrClosed", buf[:n], err)
	}
	if _, err := c.Write([]byte("injected")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write on the closed Conn: %v; want net.ErrClosed", err)
	}
	_ = peer2.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if m, _ := peer2.Read(buf); m > 0 {
		t.Errorf("the other connection's peer read %q", buf[:m])
	}
	_ = c2.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := c2.Read(buf); err != nil || string(buf[:n]) != "secret" {
		t.Errorf("the other Conn read %q, %v; want its own bytes", buf[:n], err)
	}
}
