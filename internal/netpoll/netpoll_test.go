//go:build linux

package netpoll

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// socketPair returns two connected non-blocking stream sockets.
func socketPair(t *testing.T) (a, b int) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Close(fds[0])
		syscall.Close(fds[1])
	})
	return fds[0], fds[1]
}

func newPoller(t *testing.T, workers int) *Poller {
	t.Helper()
	p, err := New(workers)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

// within fails the test when ch does not deliver within 5 s.
func within[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not happen within 5s", what)
		panic("unreachable")
	}
}

func TestReadinessRunsCallbackOnce(t *testing.T) {
	p := newPoller(t, 4)
	a, b := socketPair(t)
	var d Desc
	ran := make(chan struct{}, 4)
	fn := func() { ran <- struct{}{} }
	d.Init(a, fn)
	parked, err := p.Wait(&d)
	if err != nil || !parked {
		t.Fatalf("Wait: parked %v, %v", parked, err)
	}
	if _, err := syscall.Write(b, []byte("x")); err != nil {
		t.Fatal(err)
	}
	within(t, ran, "the callback after a write")
	// One-shot: more bytes and a Wake of a running Desc do not run it again.
	if _, err := syscall.Write(b, []byte("y")); err != nil {
		t.Fatal(err)
	}
	if p.Wake(&d) {
		t.Fatal("Wake ran the callback of a running Desc")
	}
	select {
	case <-ran:
		t.Fatal("the callback ran twice for one Wait")
	case <-time.After(50 * time.Millisecond):
	}
	// The kick is remembered: the next Wait returns at once.
	if parked, err := p.Wait(&d); parked || err != nil {
		t.Fatalf("Wait after a kick: parked %v, %v; want false, nil", parked, err)
	}
	p.Remove(&d)
}

func TestWakeRunsParkedCallback(t *testing.T) {
	p := newPoller(t, 4)
	a, _ := socketPair(t)
	var d Desc
	ran := make(chan struct{}, 1)
	d.Init(a, func() { ran <- struct{}{} })
	if parked, err := p.Wait(&d); !parked || err != nil {
		t.Fatalf("Wait: %v, %v", parked, err)
	}
	if !p.Wake(&d) {
		t.Fatal("Wake of a parked Desc did not run its callback")
	}
	within(t, ran, "the callback after Wake")
	if p.Wake(&d) {
		t.Fatal("a second Wake ran the callback again")
	}
	p.Remove(&d)
}

// TestWakeWhileArming forces a Wake between the re-arm and the state change
// that publishes it: Wait must not park, or the wake is lost.
func TestWakeWhileArming(t *testing.T) {
	p := newPoller(t, 4)
	a, _ := socketPair(t)
	var d Desc
	ran := make(chan struct{}, 1)
	testHookArmed = func(d *Desc) { p.Wake(d) }
	defer func() { testHookArmed = nil }()
	d.Init(a, func() { ran <- struct{}{} })
	parked, err := p.Wait(&d)
	if err != nil || parked {
		t.Fatalf("Wait with a Wake while arming: parked %v, %v; want false", parked, err)
	}
	select {
	case <-ran:
		t.Fatal("the callback ran while its owner kept the Desc")
	case <-time.After(20 * time.Millisecond):
	}
	p.Remove(&d)
}

// TestNoLostWake races one Wake against the owner's Wait, many times:
// every round must end with the owner running again, either because Wait
// saw the kick and returned false or because the Wake ran the callback.
func TestNoLostWake(t *testing.T) {
	p := newPoller(t, 4)
	a, _ := socketPair(t)
	var d Desc
	back := make(chan struct{}, 1)
	fn := func() { back <- struct{}{} }
	d.Init(a, fn)
	for range 5000 {
		woke := make(chan struct{})
		go func() { p.Wake(&d); close(woke) }()
		parked, err := p.Wait(&d)
		if err != nil {
			t.Fatal(err)
		}
		if parked {
			within(t, back, "the callback of a parked Desc after its Wake")
		}
		<-woke
	}
	p.Remove(&d)
}

func TestRemovedNeverRuns(t *testing.T) {
	p := newPoller(t, 4)
	a, b := socketPair(t)
	var d Desc
	ran := make(chan struct{}, 1)
	fn := func() { ran <- struct{}{} }
	d.Init(a, fn)
	if parked, err := p.Wait(&d); !parked || err != nil {
		t.Fatalf("Wait: %v, %v", parked, err)
	}
	// Take it back as its owner would after a Wake, then remove it.
	if !p.Wake(&d) {
		t.Fatal("Wake")
	}
	within(t, ran, "the callback")
	p.Remove(&d)
	if _, err := syscall.Write(b, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if p.Wake(&d) {
		t.Fatal("Wake ran a removed Desc")
	}
	if _, err := p.Wait(&d); err != ErrRemoved {
		t.Fatalf("Wait on a removed Desc: %v, want ErrRemoved", err)
	}
	select {
	case <-ran:
		t.Fatal("a removed Desc's callback ran")
	case <-time.After(50 * time.Millisecond):
	}
}

// TestReusedDescriptorNumber: a Desc removed and its socket closed with
// data pending, a new socket on the same descriptor number registers, and
// its events reach only its new Desc.
func TestReusedDescriptorNumber(t *testing.T) {
	p := newPoller(t, 4)
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := fds[0], fds[1]
	defer syscall.Close(b)
	var old Desc
	oldRan := make(chan struct{}, 8)
	old.Init(a, func() { oldRan <- struct{}{} })
	if parked, err := p.Wait(&old); !parked || err != nil {
		t.Fatalf("Wait: %v, %v", parked, err)
	}
	if _, err := syscall.Write(b, []byte("x")); err != nil {
		t.Fatal(err)
	}
	within(t, oldRan, "the old Desc's callback")
	p.Remove(&old)
	if _, err := syscall.Write(b, []byte("y")); err != nil { // an event for nobody
		t.Fatal(err)
	}
	syscall.Close(a)
	fds, err = syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, d := fds[0], fds[1]
	defer syscall.Close(d)
	if c != a { // the new socket takes a's number
		if err := syscall.Dup3(c, a, syscall.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		syscall.Close(c)
	}
	defer syscall.Close(a)
	var cur Desc
	ran := make(chan struct{}, 8)
	cur.Init(a, func() { ran <- struct{}{} })
	if parked, err := p.Wait(&cur); !parked || err != nil {
		t.Fatalf("Wait on the reused number: %v, %v", parked, err)
	}
	if _, err := syscall.Write(d, []byte("z")); err != nil {
		t.Fatal(err)
	}
	within(t, ran, "the new Desc's callback")
	select {
	case <-oldRan:
		t.Fatal("the removed Desc's callback ran again")
	case <-time.After(50 * time.Millisecond):
	}
	p.Remove(&cur)
}

// storm wakes n parked Descs at once whose callbacks wait on a barrier
// until want of them run, and returns how many ran at the same time.
func storm(t *testing.T, p *Poller, n int, want int32) int32 {
	t.Helper()
	var running, peak atomic.Int32
	release := make(chan struct{})
	var done sync.WaitGroup
	descs := make([]Desc, n)
	for i := range descs {
		a, _ := socketPair(t)
		fn := func() {
			defer done.Done()
			cur := running.Add(1)
			for {
				old := peak.Load()
				if cur <= old || peak.CompareAndSwap(old, cur) {
					break
				}
			}
			<-release
			running.Add(-1)
		}
		descs[i].Init(a, fn)
		if parked, err := p.Wait(&descs[i]); !parked || err != nil {
			t.Fatalf("Wait: %v, %v", parked, err)
		}
	}
	done.Add(n)
	for i := range descs {
		p.Wake(&descs[i])
	}
	deadline := time.Now().Add(5 * time.Second)
	for running.Load() < want && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // room for a callback too many, if the bound leaked
	close(release)
	done.Wait()
	for i := range descs {
		p.Remove(&descs[i])
	}
	return peak.Load()
}

// TestPoolIsBounded wakes many parked Descs at once whose callbacks wait on
// a barrier: no more than the pool's size run at the same time, and once
// the storm is over the workers beyond those the pool keeps end.
func TestPoolIsBounded(t *testing.T) {
	const workers, n = 3, 40
	p := newPoller(t, workers)
	p.mu.Lock()
	p.keepIdle, p.linger = 1, 20*time.Millisecond
	p.mu.Unlock()
	// The leading worker waits for readiness; Workers others run callbacks.
	if got := storm(t, p, n, workers); got != workers {
		t.Fatalf("%d callbacks ran at once, want the pool's %d", got, workers)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		p.mu.Lock()
		attached, keep := p.attached, p.keepIdle
		p.mu.Unlock()
		if attached <= keep+1 { // the idle ones and the leading one
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d workers stay after the storm, want at most %d", attached, keep)
		}
	}
}

// TestIdleWorkersLinger: the workers a storm started stay for the next
// ones while they have been idle for less than the linger, so that bursts
// close together do not start (and grow the stacks of) new goroutines.
func TestIdleWorkersLinger(t *testing.T) {
	const workers, n = 6, 40
	p := newPoller(t, workers)
	p.mu.Lock()
	p.keepIdle, p.linger = 1, time.Minute
	p.mu.Unlock()
	for i := range 3 {
		if got := storm(t, p, n, workers); got != workers {
			t.Fatalf("storm %d: %d callbacks ran at once, want the pool's %d", i+1, got, workers)
		}
	}
	p.mu.Lock()
	started := p.spawned
	p.mu.Unlock()
	// New started the first; a full pool is Workers more (one of them leads).
	if started > workers {
		t.Errorf("three storms started %d workers; the %d of a full pool should have run them all", started, workers)
	}
}

// TestDetachFreesWorker blocks the only worker's callback after Detach:
// another Desc's callback still runs.
func TestDetachFreesWorker(t *testing.T) {
	p := newPoller(t, 1)
	a1, _ := socketPair(t)
	a2, _ := socketPair(t)
	var d1, d2 Desc
	block := make(chan struct{})
	blocked := make(chan struct{})
	ran2 := make(chan struct{}, 1)
	d1.Init(a1, func() {
		p.Detach(&d1)
		close(blocked)
		<-block
	})
	if _, err := p.Wait(&d1); err != nil {
		t.Fatal(err)
	}
	d2.Init(a2, func() { ran2 <- struct{}{} })
	if _, err := p.Wait(&d2); err != nil {
		t.Fatal(err)
	}
	p.Wake(&d1)
	within(t, blocked, "the first callback to block")
	p.Wake(&d2)
	within(t, ran2, "the second callback while the first blocks detached")
	close(block)
	p.Remove(&d1)
	p.Remove(&d2)
}

// TestReadyDuringCallback makes a socket ready while the leading worker
// runs the callback it found: the leader must find that socket next, with
// no other event to wake it.
func TestReadyDuringCallback(t *testing.T) {
	p := newPoller(t, 4)
	a1, b1 := socketPair(t)
	a2, b2 := socketPair(t)
	var d1, d2 Desc
	ran2 := make(chan struct{}, 1)
	d1.Init(a1, func() {
		// A write that makes the other socket ready, then some work.
		if _, err := syscall.Write(b2, []byte("y")); err != nil {
			t.Error(err)
		}
		time.Sleep(10 * time.Millisecond)
	})
	d2.Init(a2, func() { ran2 <- struct{}{} })
	for _, d := range []*Desc{&d1, &d2} {
		if parked, err := p.Wait(d); !parked || err != nil {
			t.Fatalf("Wait: %v, %v", parked, err)
		}
	}
	if _, err := syscall.Write(b1, []byte("x")); err != nil {
		t.Fatal(err)
	}
	within(t, ran2, "the callback of the socket made ready during another callback")
	p.Remove(&d1)
	p.Remove(&d2)
}

// TestQueueStaysSmallUnderBacklog: a queue that never empties (callbacks
// queued as fast as workers take them, a few always waiting) keeps an array
// of a few times its backlog, however many callbacks go through it.
func TestQueueStaysSmallUnderBacklog(t *testing.T) {
	var q fifo
	ds := make([]Desc, 8)
	for i := range ds {
		q.push(&ds[i])
	}
	for i := range 100_000 {
		want := &ds[i%len(ds)]
		if got := q.pop(); got != want {
			t.Fatalf("pop %d: got Desc %p, want %p (first in, first out)", i, got, want)
		}
		q.push(want)
	}
	if c := cap(q.items); c > 4*len(ds) {
		t.Errorf("queue of %d callbacks holds an array of %d after 100,000 went through", len(ds), c)
	}
	for range ds {
		q.pop()
	}
	if !q.empty() {
		t.Error("queue not empty after every callback was taken")
	}
}

// Wait after Close fails with ErrClosed, also for a Desc registered before.
func TestWaitAfterClose(t *testing.T) {
	p, err := New(2)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := socketPair(t)
	var d Desc
	d.Init(a, func() {})
	if err := p.Register(&d); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if parked, err := p.Wait(&d); parked || !errors.Is(err, ErrClosed) {
		t.Errorf("Wait after Close: parked %v, %v; want ErrClosed", parked, err)
	}
}

// TestBatchOutlivesADetach makes several sockets ready while the leading
// worker runs a callback, so that the next lead claims them in one batch,
// and has each of their callbacks detach and block until all have started:
// what the lead claimed and had not run when a callback detached it must
// go to other workers, not wait for the blocked one.
func TestBatchOutlivesADetach(t *testing.T) {
	const n = 6 // fewer than leadBatch: the lead runs the batch itself
	p := newPoller(t, 2)
	started := make(chan struct{}, n+1)
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	descs := make([]Desc, n+1)
	writers := make([]int, n+1)
	for i := range descs {
		a, b := socketPair(t)
		writers[i] = b
		d := &descs[i]
		fn := func() {
			if d == &descs[0] {
				// The others become ready while the lead runs this.
				for _, w := range writers[1:] {
					if _, err := syscall.Write(w, []byte("x")); err != nil {
						t.Error(err)
					}
				}
			}
			p.Detach(d)
			started <- struct{}{}
			<-release
		}
		d.Init(a, fn)
		if parked, err := p.Wait(d); !parked || err != nil {
			t.Fatalf("Wait: %v, %v", parked, err)
		}
	}
	if _, err := syscall.Write(writers[0], []byte("x")); err != nil {
		t.Fatal(err)
	}
	for i := range descs {
		within(t, started, fmt.Sprintf("callback %d of %d to start while the others block", i+1, n+1))
	}
	once.Do(func() { close(release) })
	for i := range descs {
		p.Remove(&descs[i])
	}
}

// TestYieldHandsTheBatchOver: a callback of the lead's batch that calls
// Yield and then waits (as for Redis, without blocking on its socket or
// detaching) lets the rest of the batch run meanwhile on other workers.
func TestYieldHandsTheBatchOver(t *testing.T) {
	const n = 6
	p := newPoller(t, 2)
	started := make(chan struct{}, n)
	waited := make(chan bool, 1)
	busy := make(chan struct{})
	descs := make([]Desc, n+2) // descs[n+1] keeps the lead busy
	writers := make([]int, n+2)
	for i := range descs {
		a, b := socketPair(t)
		writers[i] = b
		d := &descs[i]
		var fn func()
		switch i {
		case n + 1:
			fn = func() {
				// The others become ready while the lead runs this, in
				// order, so that the next batch starts with descs[0].
				for _, w := range writers[:n+1] {
					if _, err := syscall.Write(w, []byte("x")); err != nil {
						t.Error(err)
					}
				}
				close(busy)
			}
		case 0:
			fn = func() {
				p.Yield(d)
				deadline := time.After(5 * time.Second)
				for range n {
					select {
					case <-started:
					case <-deadline:
						waited <- false
						return
					}
				}
				waited <- true
			}
		default:
			fn = func() { started <- struct{}{} }
		}
		d.Init(a, fn)
		if parked, err := p.Wait(d); !parked || err != nil {
			t.Fatalf("Wait: %v, %v", parked, err)
		}
	}
	if _, err := syscall.Write(writers[n+1], []byte("x")); err != nil {
		t.Fatal(err)
	}
	within(t, busy, "the first callback")
	if !within(t, waited, "the yielding callback") {
		t.Fatal("the rest of the batch did not run while a callback that yielded waited")
	}
	for i := range descs {
		p.Remove(&descs[i])
	}
}

// TestRequeueLetsTheLeadGoOn: a callback that the lead runs and that
// keeps requeuing itself (a connection whose bytes keep coming) must not
// keep the lead from the readiness of other sockets; it runs again on
// a worker until the other socket's callback has run.
func TestRequeueLetsTheLeadGoOn(t *testing.T) {
	p := newPoller(t, 1)
	a1, b1 := socketPair(t)
	a2, b2 := socketPair(t)
	var d1, d2 Desc
	ran2 := make(chan struct{})
	done := make(chan int, 1)
	runs := 0
	d1.Init(a1, func() {
		runs++
		select {
		case <-ran2:
			done <- runs
			return
		default:
		}
		if runs == 1 {
			// Ready while the lead runs d1: only its next look finds it.
			if _, err := syscall.Write(b2, []byte("x")); err != nil {
				t.Error(err)
			}
		}
		if runs > 100000 {
			done <- -1
			return
		}
		if !p.Requeue(&d1) {
			t.Error("Requeue refused a callback that runs on a worker")
			done <- -1
		}
	})
	d2.Init(a2, func() { close(ran2) })
	for _, d := range []*Desc{&d1, &d2} {
		if parked, err := p.Wait(d); !parked || err != nil {
			t.Fatalf("Wait: %v, %v", parked, err)
		}
	}
	if _, err := syscall.Write(b1, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if n := within(t, done, "the requeued callback's end"); n < 2 {
		t.Fatalf("the requeued callback ended after %d runs", n)
	}

	// A callback that detached holds no worker: Requeue leaves it be.
	a3, _ := socketPair(t)
	var d3 Desc
	refused := make(chan bool, 1)
	d3.Init(a3, func() {
		p.Detach(&d3)
		refused <- !p.Requeue(&d3)
	})
	p.Go(&d3)
	if !within(t, refused, "the detached callback") {
		t.Fatal("Requeue queued a callback that had detached")
	}
	for _, d := range []*Desc{&d1, &d2, &d3} {
		p.Remove(d)
	}
}

// TestLeadTakenBackUnderBacklog: while more Descs than workers keep
// requeueing (a steady backlog), the lead's callback detaches to block, as a
// write to a slow peer does. Someone must take the lead back at once: a
// worker that popped the queue first left readiness uncollected, so a
// parked socket with bytes (and Accept, and a detached writer's EPOLLOUT)
// waited until the backlog ended.
func TestLeadTakenBackUnderBacklog(t *testing.T) {
	const workers = 2
	p := newPoller(t, workers)
	time.Sleep(10 * time.Millisecond) // New's worker leads
	var stop atomic.Bool
	busy := make([]Desc, workers+1)
	var busyDone sync.WaitGroup
	for i := range busy {
		a, _ := socketPair(t)
		d := &busy[i]
		busyDone.Add(1)
		d.Init(a, func() {
			if !stop.Load() {
				time.Sleep(200 * time.Microsecond) // a run's work
				if p.Requeue(d) {
					return
				}
			}
			busyDone.Done()
		})
		p.Go(d)
	}
	time.Sleep(20 * time.Millisecond) // the backlog is steady

	// L: run by the lead (its readiness), detaches and blocks for a while,
	// as a write to a slow peer would.
	la, lb := socketPair(t)
	var l Desc
	detached := make(chan struct{})
	release := make(chan struct{})
	l.Init(la, func() {
		p.Detach(&l)
		close(detached)
		<-release
	})
	if parked, err := p.Wait(&l); !parked || err != nil {
		t.Fatal(parked, err)
	}
	// X: a parked connection whose bytes arrive while L blocks.
	xa, xb := socketPair(t)
	var x Desc
	xran := make(chan struct{}, 1)
	x.Init(xa, func() { xran <- struct{}{} })
	if parked, err := p.Wait(&x); !parked || err != nil {
		t.Fatal(parked, err)
	}
	syscall.Write(lb, []byte("l"))
	within(t, detached, "L's callback on the lead")
	syscall.Write(xb, []byte("x"))
	var failed bool
	select {
	case <-xran:
	case <-time.After(time.Second):
		p.mu.Lock()
		t.Errorf("a readable parked Desc did not run within 1s while the lead's callback blocked detached "+
			"(leading %v, attached %d, idle %d, queue empty %v)", p.leading, p.attached, p.idle, p.queue.empty())
		p.mu.Unlock()
		failed = true
	}
	stop.Store(true)
	busyDone.Wait()
	if failed {
		within(t, xran, "X's callback once the backlog ended")
		t.Log("X ran once the backlog ended")
	}
	close(release)
	for l.state.Load() != running {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond)
	p.Remove(&l)
	p.Remove(&x)
	for i := range busy {
		p.Remove(&busy[i])
	}
}
