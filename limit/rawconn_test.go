package limit

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	wsframes "github.com/holo/wsgate/frames"
)

// TestRawConn: the Redis client's connection reads and writes as a
// net.Conn does: whole writes larger than the socket's buffers, reads that
// wait, deadlines, the peer's close.
func TestRawConn(t *testing.T) {
	if !wsframes.RawIO {
		t.Skip("no raw socket calls on this platform")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := dialRaw(context.Background(), ln.Addr().String(), &net.Dialer{Timeout: time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*rawConn); !ok {
		t.Fatalf("dialRaw returned a %T, want *rawConn", c)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	defer peer.Close()

	// A write of 8 MiB waits for the peer to read it.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<19)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(peer, int64(len(big))))
		got <- b
	}()
	if n, err := c.Write(big); n != len(big) || err != nil {
		t.Fatalf("Write: %d, %v; want %d, nil", n, err, len(big))
	}
	if b := <-got; !bytes.Equal(b, big) {
		t.Fatalf("the peer read %d bytes, not what was written", len(b))
	}

	// A read waits for bytes.
	go func() {
		time.Sleep(20 * time.Millisecond)
		peer.Write([]byte("+OK\r\n"))
	}()
	buf := make([]byte, 64)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "+OK\r\n" {
		t.Fatalf("Read: %q, %v", buf[:n], err)
	}

	// A deadline ends a wait with a timeout.
	if err := c.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	_, err = c.Read(buf)
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past the deadline: %v, want a timeout", err)
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}

	// The peer's close is io.EOF; a write after its reset fails.
	peer.Close()
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Read after the peer closed: %d, %v; want io.EOF", n, err)
	}
	var werr error
	for range 100 {
		if _, werr = c.Write([]byte("PING\r\n")); werr != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if werr == nil {
		t.Fatal("writes to a closed peer kept succeeding")
	}

	// After Close, calls fail with net.ErrClosed.
	c.Close()
	if _, err := c.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
	}
}

// TestRedisUnixSocket: a unix:// URL reaches Redis over its Unix socket;
// the raw dial is for TCP only, and must not replace ParseURL's own.
func TestRedisUnixSocket(t *testing.T) {
	sock := t.TempDir() + "/redis.sock"
	startRedis(t, "--unixsocket", sock)
	l := newLimiter(t, Config{RedisURL: "unix://" + sock, KeyPrefix: keyPrefix(t), Timeout: time.Second,
		Rules: Rules{UserMessages: rate(10, time.Minute, 0)}})
	d := l.Message(context.Background(), "u", "192.0.2.1")
	if !d.Allowed || d.Fallback || d.Store != storeRedis {
		t.Fatalf("a message over the Unix socket: %+v, want decided by Redis", d)
	}
}
