//go:build linux

package netpoll

import (
	"errors"
	"os"
	"syscall"
	"testing"
	"time"
)

// registered returns a Desc registered with p for the socket fd, whose
// callback must not run: the tests block on it instead.
func registered(t *testing.T, p *Poller, fd int) *Desc {
	t.Helper()
	d := new(Desc)
	d.Init(fd, func() { t.Error("the callback of a Desc that never parked ran") })
	if err := p.Register(d); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Remove(d) })
	// The registration reports the socket writable once: wait for that
	// edge and forget it, so that a test's wait starts from nothing.
	for i := 0; d.wr.Load() != pendingWrite; i++ {
		if i == 5000 {
			t.Fatal("no event after the registration of a writable socket")
		}
		time.Sleep(time.Millisecond)
	}
	d.wr.Store(nil)
	return d
}

// block runs Block on a goroutine of its own and delivers its result.
func block(p *Poller, d *Desc, write bool, deadline int64) <-chan error {
	done := make(chan error, 1)
	go func() { done <- p.Block(d, write, deadline) }()
	return done
}

// still fails the test when ch delivers within 50 ms.
func still(t *testing.T, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s returned early: %v", what, err)
	case <-time.After(50 * time.Millisecond):
	}
}

// fill writes to fd until its buffer is full.
func fill(t *testing.T, fd int) {
	t.Helper()
	buf := make([]byte, 64<<10)
	for range 1000 {
		if _, err := syscall.Write(fd, buf); err == syscall.EAGAIN {
			return
		} else if err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("the socket's buffer never filled")
}

// drain reads fd until nothing is left.
func drain(t *testing.T, fd int) {
	t.Helper()
	buf := make([]byte, 64<<10)
	for {
		if _, err := syscall.Read(fd, buf); err == syscall.EAGAIN {
			return
		} else if err != nil {
			t.Fatal(err)
		}
	}
}

func TestBlockReadReturnsWhenBytesArrive(t *testing.T) {
	p := newPoller(t, 4)
	a, b := socketPair(t)
	d := registered(t, p, a)
	done := block(p, d, false, 0)
	still(t, done, "Block to read an empty socket")
	if _, err := syscall.Write(b, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := within(t, done, "Block's return after a write"); err != nil {
		t.Fatal(err)
	}
	// The wake was taken: the next wait is a wait again.
	drain(t, a)
	still(t, block(p, d, false, 0), "Block after the wake was taken")
	p.Wake(d) // let the last goroutine go
}

func TestBlockWriteReturnsWhenRoomIsMade(t *testing.T) {
	p := newPoller(t, 4)
	a, b := socketPair(t)
	d := registered(t, p, a)
	fill(t, a)
	done := block(p, d, true, 0)
	still(t, done, "Block to write to a full socket")
	drain(t, b)
	if err := within(t, done, "Block's return after the peer read"); err != nil {
		t.Fatal(err)
	}
}

func TestBlockDeadline(t *testing.T) {
	p := newPoller(t, 4)
	a, _ := socketPair(t)
	d := registered(t, p, a)
	past := time.Now().Add(-time.Second).UnixNano()
	if err := p.Block(d, false, past); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Block with a past deadline: %v", err)
	}
	start := time.Now()
	if err := p.Block(d, false, time.Now().Add(30*time.Millisecond).UnixNano()); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Block until a deadline: %v", err)
	}
	if time.Since(start) < 30*time.Millisecond {
		t.Fatal("Block returned before its deadline")
	}
	fill(t, a)
	if err := p.Block(d, true, time.Now().Add(30*time.Millisecond).UnixNano()); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Block to write until a deadline: %v", err)
	}
}

// TestWakeEndsBlock: a Wake ends both waits on a Desc, the owner's read
// and the writer's.
func TestWakeEndsBlock(t *testing.T) {
	p := newPoller(t, 4)
	a, _ := socketPair(t)
	d := registered(t, p, a)
	fill(t, a)
	reading, writing := block(p, d, false, 0), block(p, d, true, 0)
	still(t, reading, "Block to read")
	still(t, writing, "Block to write")
	p.Wake(d)
	if err := within(t, reading, "the read's return after Wake"); err != nil {
		t.Fatal(err)
	}
	if err := within(t, writing, "the write's return after Wake"); err != nil {
		t.Fatal(err)
	}
}

// TestNoLostBlockWake races a Wake against Block, to read and to write,
// many times: no round may leave the waiter blocked.
func TestNoLostBlockWake(t *testing.T) {
	p := newPoller(t, 4)
	a, _ := socketPair(t)
	d := registered(t, p, a)
	fill(t, a)
	for _, write := range []bool{false, true} {
		for range 5000 {
			d.wr.Store(nil)
			d.state.Store(running)
			done := block(p, d, write, 0)
			p.Wake(d)
			if err := within(t, done, "Block's return after a racing Wake"); err != nil {
				t.Fatal(err)
			}
		}
	}
}
