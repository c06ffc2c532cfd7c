package proxy

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/gobwas/ws"
)

// TestFloodDoesNotHoldTheLead: a client that sends small frames faster
// than the gate relays them, to an upstream that takes them at once, never
// leaves the gate without bytes to read and never makes it wait to write.
// Woken by the poller's leading worker, its direction must still give the
// worker back after a while, or no other connection's bytes are looked at
// for as long as the flood lasts.
func TestFloodDoesNotHoldTheLead(t *testing.T) {
	up := rawUpstreamFor(t, func(r *http.Request, c net.Conn, br *bufio.Reader) {
		if r.URL.Path == "/flood" {
			// Takes the bytes at once: the gate never waits to write them.
			buf := make([]byte, 1<<20)
			_, _ = br.Discard(br.Buffered())
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}
		for {
			h, p, err := readFrame(br)
			if err != nil || h.OpCode == ws.OpClose {
				return
			}
			if _, err := c.Write(serverFrame(h.OpCode, p)); err != nil {
				return
			}
		}
	})
	g := newGate(t, up.URL, nil)
	if g.proxy.started() == nil {
		t.Skip("no poller on this platform: each direction has a goroutine of its own")
	}
	// The flooding client's direction is the first to park. The gate
	// relays its frames slowly, so that the client surely outruns it: on
	// this machine the client, the gate and the upstream share the cores.
	parked := make(chan struct{})
	var flooding atomic.Pointer[direction]
	var relayed atomic.Int64 // frames of the flood relayed
	g.proxy.hooks.beforePark = func(d *direction) {
		if d.client && flooding.CompareAndSwap(nil, d) {
			close(parked)
		}
	}
	g.proxy.hooks.afterBatch = func(d *direction) {
		if d == flooding.Load() {
			relayed.Add(1)
			time.Sleep(10 * time.Microsecond)
		}
	}

	// The flooding client parks first, so that its flood wakes it on the
	// leading worker.
	flood, _ := rawClient(t, g, "/flood")
	select {
	case <-parked:
	case <-time.After(5 * time.Second):
		t.Fatal("the flooding client's direction never parked")
	}
	var burst []byte
	for len(burst) < 64<<10 {
		burst = append(burst, maskedFrame(true, 1, []byte("x"))...)
	}
	stop := make(chan struct{})
	flooded := make(chan error, 1)
	// Bounded: until the other client is answered, or for 10 s.
	end := time.Now().Add(10 * time.Second)
	_ = flood.SetWriteDeadline(end)
	go func() {
		for time.Now().Before(end) {
			if _, err := flood.Write(burst); err != nil {
				select {
				case <-stop: // interrupted: the other client was answered
					err = nil
				default:
				}
				flooded <- err
				return
			}
		}
		flooded <- nil
	}()

	c := dial(t, wsURL(g.Server, "/echo"), nil)
	ctx := ctx5(t)
	if err := c.Write(ctx, websocket.MessageText, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	_, got, err := c.Read(ctx)
	close(stop)
	_ = flood.SetWriteDeadline(time.Now())
	if err != nil {
		t.Fatalf("no echo while another connection floods: %v", err)
	}
	if !bytes.Equal(got, []byte("hello")) {
		t.Fatalf("echo %q", got)
	}
	if n := relayed.Load(); n < runBudget/2 {
		// Not a measure of the fix: the flood must have been under way.
		t.Fatalf("only %d frames of the flood relayed before the echo: it had not begun", n)
	}
	if err := <-flooded; err != nil {
		t.Fatalf("the flooding client was cut off: %v", err)
	}
}
