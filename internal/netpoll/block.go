package netpoll

import (
	"os"
	"sync"
	"time"
)

// parker is what a goroutine blocked in Block sleeps on. It comes from a
// pool for the length of one wait, so a Desc holds neither a channel nor a
// timer of its own.
type parker struct {
	ch chan struct{} // the wait's one wake; capacity 1, so sending never blocks
	t  *time.Timer
}

var parkers = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &parker{ch: make(chan struct{}, 1), t: t}
}}

// pendingWrite in a Desc's wr says that the socket may have become
// writable (or was kicked) while no writer blocked: the next Block to write
// returns at once and the writer tries again.
var pendingWrite = new(parker)

// Block parks the calling goroutine until d's socket may be ready for it:
// readable, when d's owner calls it (write false), or writable, when the
// one goroutine that writes to the socket calls it (write true). It returns
// nil then, and also after a Wake of d or an event that came since the
// caller last tried the socket: the caller tries the socket again and calls
// Block again if it would still block. At deadline (unix nanoseconds; 0 for
// none) it returns os.ErrDeadlineExceeded. d must be registered (Register);
// the goroutine is not counted in any pool while it waits.
//
// For a reader the pending wake is d's kicked state, which Block takes, as
// Wait does; for the writer it is pendingWrite in d.wr. Either way the
// waiter publishes its parker and then looks for a pending wake, and a
// waker publishes the wake and then looks for a parker, so one of the two
// always sees the other.
func (p *Poller) Block(d *Desc, write bool, deadline int64) error {
	if p.halted.Load() {
		return ErrClosed
	}
	if takePending(d, write) {
		return nil
	}
	var wait time.Duration
	if deadline != 0 {
		if wait = time.Until(time.Unix(0, deadline)); wait <= 0 {
			return os.ErrDeadlineExceeded
		}
	}
	pk := parkers.Get().(*parker)
	defer parkers.Put(pk)
	slot := &d.rd
	if write {
		slot = &d.wr
		if !slot.CompareAndSwap(nil, pk) {
			slot.CompareAndSwap(pendingWrite, nil) // woken meanwhile
			return nil
		}
	} else {
		slot.Store(pk)
		if d.state.Load() != running {
			// Kicked meanwhile: take the parker back, or the wake that
			// the waker is about to send.
			if !slot.CompareAndSwap(pk, nil) {
				<-pk.ch
			}
			takePending(d, false)
			return nil
		}
	}
	if p.halted.Load() {
		// Closed after the first look, maybe before the parker was there
		// to be woken: take it back, or the wake on its way.
		if !slot.CompareAndSwap(pk, nil) {
			<-pk.ch
		}
		return ErrClosed
	}
	var timeout <-chan time.Time
	if wait > 0 {
		pk.t.Reset(wait)
		timeout = pk.t.C
	}
	select {
	case <-pk.ch:
	case <-timeout:
		if slot.CompareAndSwap(pk, nil) {
			return os.ErrDeadlineExceeded
		}
		<-pk.ch // woken right at the deadline: the waker's send is on its way
	}
	if wait > 0 {
		pk.t.Stop()
	}
	if !write {
		takePending(d, false)
	}
	if p.halted.Load() {
		// stop woke it: the socket is not ready, whatever it waited for
		// (a connect still under way would read as connected).
		return ErrClosed
	}
	return nil
}

// takePending takes a wake that came for the caller of Block, if any.
func takePending(d *Desc, write bool) bool {
	if write {
		return d.wr.Load() == pendingWrite && d.wr.CompareAndSwap(pendingWrite, nil)
	}
	return d.state.Load() == kicked && d.state.CompareAndSwap(kicked, running)
}

// unblock wakes the goroutines blocked in Block on d, if any, and nothing
// else: d's callback does not run.
func unblock(d *Desc) {
	if pk := d.rd.Swap(nil); pk != nil {
		pk.ch <- struct{}{}
	}
	writable(d)
}

// writable wakes the goroutine blocked writing to d's socket, or leaves
// pendingWrite for the next one.
func writable(d *Desc) {
	for {
		switch pk := d.wr.Load(); pk {
		case pendingWrite:
			return
		case nil:
			if d.wr.CompareAndSwap(nil, pendingWrite) {
				return
			}
		default:
			if d.wr.CompareAndSwap(pk, nil) {
				pk.ch <- struct{}{}
				return
			}
		}
	}
}
