// Package netpoll runs a callback when a socket has bytes to read, on a
// bounded pool of worker goroutines, so that an idle connection holds no
// goroutine (and no goroutine stack) of its own. It is the "readiness, then
// read" design of gobwas' "A Million WebSockets and Go", cut down to what
// the gate needs: one-shot waits for readability, wakes from other
// goroutines, a pool that a callback can leave before it blocks, and
// blocking waits for reading or writing.
//
// # Descriptors and their owner
//
// A Desc is one socket's registration. It is embedded in the struct of the
// goroutine-less task that reads the socket (its owner), and it is in one of
// these states:
//
//   - running: some goroutine runs the owner's code. Only that goroutine may
//     call Wait, Detach or Remove.
//   - running, kicked: as running, and a Wake (or a stray readiness event)
//     came meanwhile: the owner's next Wait returns at once instead of
//     parking, so a wake is never lost.
//   - armed: the owner parked it with Wait and no goroutine runs its code.
//     The first readiness event or Wake moves it back to running and runs
//     its callback on a worker; everything else leaves it alone.
//   - removed: Remove was called; nothing runs its callback again.
//
// The owner publishes what it will look at before it parks, and a goroutine
// that wants the owner to look again publishes first and then calls Wake:
// either the owner's Wait sees the kick and returns false, or Wake finds the
// Desc armed and runs the callback. No interleaving loses the wake.
//
// # Workers
//
// One worker leads: it waits for readiness, claims the Descs it finds and
// runs a small batch of them itself, in turn; a large one it hands to the
// others (leadBatch). Callbacks run on at most Workers goroutines at a time,
// which stay for the next callback when they finish one: a storm of wakes
// (every connection's keepalive answer in the same second) costs Workers
// stacks, not one per connection. Once a storm is over, workers beyond a few
// per processor end rather than keep their stacks idle: those that stayed
// idle for a whole Linger. (Ending a worker as soon as it found nothing to
// do had the next burst start it again, and grow its new stack again: with
// decisions that wait for Redis at 50 busy connections, 1,600 workers a
// second started and ended, 4% of the gate's CPU.) A callback that is about
// to block (a write to a slow peer, the rest of a frame that has not
// arrived) calls Detach first: its worker is replaced, so blocked
// connections never starve the pool, and the detached goroutine rejoins the
// pool when the callback returns, if the pool has room, and ends otherwise.
//
// # Blocking waits and owned sockets
//
// A callback that must wait for its socket in the middle of its work (the
// rest of a frame, room to write) blocks in Block, which parks the
// goroutine, not a thread, until the socket is ready, a Wake or a deadline.
// With Block, a socket needs no registration in the runtime's own poller:
// Own takes a connection's socket from the runtime, so each segment is
// reported once, here, and the runtime keeps no state for it.
//
// docs/ARCHITECTURE.md places this package in the gate.
package netpoll

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// States of a Desc.
const (
	running int32 = iota
	kicked
	arming // inside Wait: the state is set, the registration not yet
	armed
	removed
)

// testHookArmed, when set by a test, runs in Wait between the re-arm and
// the state change that publishes it: where a Wake must not be lost.
var testHookArmed func(*Desc)

// ErrUnsupported is returned by New where there is no poller (anything but
// Linux): the caller keeps a goroutine blocked on each connection instead.
var ErrUnsupported = errors.New("netpoll: not supported on this platform")

// ErrRemoved is returned by Wait on a removed Desc.
var ErrRemoved = errors.New("netpoll: descriptor removed")

// ErrClosed is returned by Wait after Close.
var ErrClosed = errors.New("netpoll: poller closed")

// Desc is one socket's registration with a Poller. Its zero value is
// unregistered; it must not be copied after the first Wait.
type Desc struct {
	state atomic.Int32
	fd    int32
	id    uint64 // in the epoll set under this id; 0 when not added. Owner only
	fn    func()
	w     *worker // the worker running fn, until Detach; owner only
	// rd is the owner's parker while it blocks to read (Block); wr is the
	// writer's while it blocks to write, or pendingWrite (block.go).
	rd, wr atomic.Pointer[parker]
}

// worker is one goroutine of the pool.
type worker struct {
	leading  bool // it waits for readiness for the pool
	detached bool // its callback is blocking; it no longer counts in the pool
	// batch holds what it claimed as the lead (kept for the next batch),
	// rest the part of it not run yet. Only w's goroutine uses them.
	batch, rest []*Desc
}

// Poller waits for readability of registered sockets and runs their
// callbacks on a bounded pool of workers. Create it with New.
type Poller struct {
	impl // the platform's readiness source

	mu       sync.Mutex
	cond     sync.Cond
	queue    fifo // callbacks waiting for a worker
	leading  bool // a worker leads (waits for readiness, or runs what it found)
	attached int  // workers in the pool: leading, running, idle; not detached
	idle     int  // idle workers that no Signal woke yet
	max      int
	keepIdle int // idle workers kept for good; those beyond end after linger
	closed   bool
	workers  sync.WaitGroup

	// Idle workers beyond keepIdle end at a tick of trimT when they were
	// idle since the one before: fewest is the fewest idle workers seen
	// since then, trim how many idle workers are to end now. trimT ticks
	// every linger while more than keepIdle workers are idle.
	linger   time.Duration
	fewest   int
	trim     int
	trimming bool
	trimT    *time.Timer
	spawned  int // workers started, for tests

	halted atomic.Bool // Close has begun: Block fails at once
}

// Linger is how long a worker beyond the few a Poller always keeps stays
// idle before it ends.
const Linger = time.Second

// DefaultWorkers is the size of the pool when New is given 0.
const DefaultWorkers = 64

// New starts a Poller whose queued callbacks run on at most workers
// goroutines at a time (0 means DefaultWorkers), besides the one that leads
// and runs a small batch of callbacks itself, in turn (leadBatch).
func New(workers int) (*Poller, error) {
	if workers <= 0 {
		workers = DefaultWorkers
	}
	p := &Poller{max: workers, keepIdle: min(workers, 4*runtime.GOMAXPROCS(0)), linger: Linger}
	p.cond.L = &p.mu
	if err := p.start(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.attached++
	p.workers.Add(1)
	go p.work()
	p.mu.Unlock()
	return p, nil
}

// Init sets the socket d waits for and the callback that runs when it is
// ready. Call it once, before d is used.
func (d *Desc) Init(fd int, fn func()) {
	d.fd, d.fn = int32(fd), fn
}

// Register adds d's socket to the poller's set, once, before Wait or Block
// needs it: Wait registers it itself, Block needs it done. Only d's owner
// calls it, before it hands d to another goroutine.
func (p *Poller) Register(d *Desc) error {
	return p.arm(d)
}

// Wait parks d until its socket is readable (or hung up, or in error), or
// until Wake: then d's callback runs once on a worker and owns d. It
// reports false when a Wake (or an event) came since the owner's last
// Wait; the owner then keeps d and must look at its state again before it
// waits. d must not be registered with another Poller.
func (p *Poller) Wait(d *Desc) (parked bool, err error) {
	if !d.state.CompareAndSwap(running, arming) {
		if d.state.CompareAndSwap(kicked, running) {
			return false, nil
		}
		return false, ErrRemoved
	}
	if err := p.arm(d); err != nil {
		// Whatever came meanwhile, the owner keeps d.
		d.state.Store(running)
		return false, err
	}
	if testHookArmed != nil {
		testHookArmed(d)
	}
	if d.state.CompareAndSwap(arming, armed) {
		return true, nil
	}
	// Kicked while arming. The registration stays armed; should it fire
	// later, it only kicks d again, which costs its owner one more look.
	d.state.Store(running)
	return false, nil
}

// Wake runs d's callback on a worker if d is parked, and otherwise makes
// the owner's next Wait return at once; a goroutine blocked in Block on d,
// to read or to write, returns. It reports whether it ran the callback.
// Any goroutine may call it, any number of times.
func (p *Poller) Wake(d *Desc) bool {
	writable(d)
	if !claim(d) {
		return false
	}
	p.dispatch(d)
	return true
}

// claim takes a parked d for a run of its callback, which the caller then
// owes, and otherwise kicks it. It reports whether it took d.
func claim(d *Desc) bool {
	for {
		switch s := d.state.Load(); s {
		case armed:
			if d.state.CompareAndSwap(armed, running) {
				return true
			}
		case running, arming:
			if d.state.CompareAndSwap(s, kicked) {
				if s == running && d.rd.Load() != nil {
					// The owner blocks to read: it returns (block.go).
					if pk := d.rd.Swap(nil); pk != nil {
						pk.ch <- struct{}{}
					}
				}
				return false
			}
		default: // kicked already, or removed
			return false
		}
	}
}

// Remove takes d out of the poller for good: its callback never runs
// again, and its socket is to be closed once Remove has returned, which
// ends its registration (see forget). Only d's owner calls it, when nobody
// blocks on d any more.
func (p *Poller) Remove(d *Desc) {
	d.state.Store(removed)
	if d.id != 0 {
		p.forget(d)
		d.id = 0
	}
}

// Detach is called by d's callback, on the goroutine that runs it, before
// it blocks: the goroutine stops counting in the pool (another worker takes
// its place, and the lead if it led) until the callback returns. It does
// nothing when the callback does not run on a worker, or has detached
// already.
func (p *Poller) Detach(d *Desc) {
	w := d.w
	if w == nil {
		return
	}
	d.w = nil
	w.detached = true
	p.mu.Lock()
	p.attached--
	if w.leading {
		w.leading = false
		p.leading = false
		p.wakeOne()
		p.giveRest(w) // owed a run, and w is about to block
	}
	p.spawnIfNeeded()
	p.mu.Unlock()
}

// Yield is called by d's callback, on the goroutine that runs it, before
// work that may wait without blocking on a socket (a call to Redis): the
// rest of the batch its worker claimed as the lead goes to other workers
// instead of waiting behind it. It does nothing elsewhere.
func (p *Poller) Yield(d *Desc) {
	if w := d.w; w != nil && w.leading && len(w.rest) > 0 {
		p.mu.Lock()
		p.giveRest(w)
		p.mu.Unlock()
	}
}

// Requeue is called by d's callback, on the goroutine that runs it, when
// it has run long enough with work still to do (bytes that keep coming):
// d's next run is queued behind the callbacks already waiting, and the
// callback must then return at once and leave d alone. Its worker, the
// lead included, goes on with other work. It reports false, and queues
// nothing, when the callback does not hold a worker of the pool (it
// detached, or was not started by the poller): that goroutine keeps no one
// waiting, and runs on.
func (p *Poller) Requeue(d *Desc) bool {
	if d.w == nil {
		return false
	}
	p.dispatch(d)
	return true
}

// giveRest queues what is left of the batch w claimed as the lead, and
// drops w's references to the batch. Called with p.mu held.
func (p *Poller) giveRest(w *worker) {
	p.queueAll(w.rest)
	w.rest = nil
	clear(w.batch)
}

// Go runs d's callback on a worker now, as a Wake of a parked Desc would.
// d's owner hands it over: after Go, the callback owns d. It is how a new
// connection's first run is started.
func (p *Poller) Go(d *Desc) {
	p.dispatch(d)
}

// dispatch queues d's callback for a worker.
func (p *Poller) dispatch(d *Desc) {
	p.mu.Lock()
	p.queue.push(d)
	p.wakeOne()
	p.mu.Unlock()
}

// dispatchAll queues the callbacks of ds, a worker for each.
func (p *Poller) dispatchAll(ds []*Desc) {
	p.mu.Lock()
	p.queueAll(ds)
	p.mu.Unlock()
}

// queueAll is dispatchAll with p.mu held.
func (p *Poller) queueAll(ds []*Desc) {
	for _, d := range ds {
		p.queue.push(d)
		p.wakeOne()
	}
}

// wakeOne gets a worker going for queued callbacks or the lead: an idle
// one, or a new one while the pool has room. Called with p.mu held.
func (p *Poller) wakeOne() {
	if p.idle > 0 {
		p.signal()
		return
	}
	p.spawnIfNeeded()
}

// spawnIfNeeded starts a worker when there is work nobody takes (queued
// callbacks, or nobody leads), no worker is idle and the pool has room: the
// leading worker does not count, since it waits for readiness rather than
// for queued callbacks. Called with p.mu held.
func (p *Poller) spawnIfNeeded() {
	busy := p.attached
	if p.leading {
		busy--
	}
	if p.closed || p.idle > 0 || (p.queue.empty() && p.leading) || busy >= p.max {
		return
	}
	p.attached++
	p.spawned++
	p.workers.Add(1)
	go p.work()
}

// work is one worker: it runs queued callbacks, leads when nobody does,
// and waits idle otherwise, until Close or until it is one idle worker too
// many.
func (p *Poller) work() {
	defer p.workers.Done()
	w := &worker{}
	p.mu.Lock()
	for {
		switch {
		case !p.leading && !p.closed:
			// Readiness comes before queued callbacks: under a backlog
			// that never empties (runs that requeue), a worker that popped
			// the queue first left nobody leading once the lead detached,
			// and parked sockets, Accept and blocked writers waited for the
			// backlog to end. The queue gets another worker if there is room.
			p.leading, w.leading = true, true
			p.spawnIfNeeded()
			p.mu.Unlock()
			if !p.lead(w) {
				return
			}
			p.mu.Lock()
		case !p.queue.empty():
			d := p.queue.pop()
			p.mu.Unlock()
			if !p.run(w, d) {
				return
			}
			p.mu.Lock()
		case p.closed:
			p.attached--
			p.mu.Unlock()
			return
		case p.trim > 0:
			// Idle since the last tick, and one too many: it ends.
			p.trim--
			p.attached--
			p.mu.Unlock()
			return
		default:
			p.idle++
			if p.idle > p.keepIdle && !p.trimming {
				p.trimming, p.fewest = true, p.idle
				if p.trimT == nil {
					p.trimT = time.AfterFunc(p.linger, p.trimIdle)
				} else {
					p.trimT.Reset(p.linger)
				}
			}
			p.cond.Wait() // woken by signal (or Close), which counted it
		}
	}
}

// signal wakes one idle worker, which no longer counts as idle: each idle
// worker waits on p.cond from under p.mu, so there is one for each Signal.
// Counting it when it runs instead would let the wakes that come before it
// does all go to it, with nobody started for the work they queued. Called
// with p.mu held and p.idle > 0.
func (p *Poller) signal() {
	p.idle--
	p.fewest = min(p.fewest, p.idle)
	p.cond.Signal()
}

// trimIdle is a tick of trimT: the idle workers beyond keepIdle that
// stayed idle since the last tick end, and trimT ticks again while more
// than keepIdle stay idle.
func (p *Poller) trimIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.trim = max(p.fewest-p.keepIdle, 0)
	for range p.trim {
		p.signal()
	}
	p.fewest = p.idle
	if p.fewest > p.keepIdle {
		p.trimT.Reset(p.linger)
	} else {
		p.trimming = false
	}
}

// leadBatch is the most claimed Descs the leading worker runs itself, one
// after the other, before it looks for readiness again; it queues a larger
// batch for the other workers but its first. A batch this small costs less
// run in turn than spread: each callback handed over wakes a worker, most
// often on another processor, and a worker back at a connection sooner
// finds fewer bytes to read. At 50 busy connections (batches of a few
// events), running up to 32 in turn cut the gate's CPU per message by 9 to
// 17% against handing them over, and up to 64 by another 9 to 12% (paired
// runs, each measuring both builds: two for 32, four for 64); running
// every batch in turn cost 15% more at 8,000 connections, where batches
// fill the event array. With 64 that row came out within the noise of an
// A/A run (4%) in three runs of four and 11% worse in one; 128 cost 7%
// there. A callback that is about to wait for something other than its
// socket calls Yield, and one about to block on its socket Detach: either
// hands the rest of the batch over first.
const leadBatch = 64

// lead waits for readiness and runs what it finds until the poller closes
// or w's callback detaches it. It reports whether w stays in the pool.
func (p *Poller) lead(w *worker) bool {
	for w.leading {
		batch, err := p.ready(w.batch[:0])
		w.batch = batch
		if err != nil {
			p.mu.Lock()
			w.leading, p.leading, p.closed = false, false, true
			p.cond.Broadcast()
			p.mu.Unlock()
			return true
		}
		if len(batch) > leadBatch {
			p.dispatchAll(batch[1:])
			clear(batch[1:])
			batch = batch[:1]
		}
		// A callback that detaches w hands w.rest to the queue (Detach).
		w.rest = batch
		for len(w.rest) > 0 {
			d := w.rest[0]
			w.rest = w.rest[1:]
			if !p.run(w, d) {
				clear(w.batch)
				return false
			}
		}
		clear(w.batch)
	}
	return true
}

// run runs d's callback on w. It reports whether w stays in the pool: a
// worker that detached rejoins when the pool has room, and ends otherwise.
func (p *Poller) run(w *worker, d *Desc) bool {
	d.w = w
	d.fn()
	if !w.detached {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	busy := p.attached
	if p.leading {
		busy--
	}
	if p.closed || busy >= p.max {
		return false
	}
	w.detached = false
	p.attached++
	return true
}

// fifo is the queue of callbacks waiting for a worker, oldest first: the
// Descs in items[head:]. Under a steady backlog it may never empty, so a
// push that finds no room moves the waiting Descs to the front before it
// grows the array, which then stays within a few times the longest
// backlog. Appending alone grew it with every callback queued since it last
// emptied, and kept it at its largest: with a rules file in exact mode at
// 8,000 busy connections, those appends were 6% of the bytes the gate
// allocated.
type fifo struct {
	items []*Desc
	head  int
}

func (q *fifo) empty() bool { return q.head == len(q.items) }

func (q *fifo) push(d *Desc) {
	if len(q.items) == cap(q.items) && q.head >= len(q.items)/2 && q.head > 0 {
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	q.items = append(q.items, d)
}

// pop takes the oldest Desc; the queue must not be empty.
func (q *fifo) pop() *Desc {
	d := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
	return d
}

// Close stops the readiness loop and the workers once they have run every
// queued callback, and waits for them (detached goroutines included). Call
// it when no Desc is armed or running any more.
func (p *Poller) Close() error {
	err := p.stop()
	p.mu.Lock()
	p.closed = true
	p.cond.Broadcast()
	if p.trimT != nil {
		p.trimT.Stop()
	}
	p.mu.Unlock()
	p.workers.Wait()
	return err
}
