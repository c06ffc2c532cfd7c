package proxy

import "time"

// A direction with nothing to read gives its goroutine up: its socket
// waits in the poller (poller_linux.go) and a new goroutine starts when
// bytes arrive. Exactly one goroutine owns a running direction; d.state
// says whether one does.

// wake hands a parked direction to a new goroutine; it does nothing to a
// direction that runs already.
func (pr *pair) wake(d *direction) {
	if d.state.CompareAndSwap(parked, running) {
		go pr.serve(d, true)
	}
}

// parkAfter is how long a direction that has just relayed a frame waits
// for the next one on the runtime's poller before it parks: a busy
// connection keeps its goroutine and the lowest latency (a wake through
// the poller costs tens of microseconds), a quiet one gives it up.
const parkAfter = 2 * time.Second

// idleWait runs when d may wait for its next frame. A direction that has
// relayed a frame since it last waited blocks in the runtime's poller for
// up to parkAfter; one that stays quiet, or has never relayed anything,
// parks. It reports whether d was parked.
func (pr *pair) idleWait(d *direction) (bool, error) {
	if !pr.mayPark(d) {
		return false, nil
	}
	if d.active {
		d.active = false
		_ = d.src.SetReadDeadline(time.Now().Add(parkAfter))
		err := d.r.Wait()
		// end or a passing close frame may have set a deadline meanwhile;
		// keep it bounded rather than clear it.
		if pr.ended.Load() || pr.closing.Load() {
			_ = d.src.SetReadDeadline(time.Now().Add(pr.p.cfg.CloseTimeout))
		} else {
			_ = d.src.SetReadDeadline(time.Time{})
		}
		if err == nil {
			return false, nil
		}
		if !isTimeout(err) {
			return false, err
		}
		if !pr.mayPark(d) {
			// The wait was cut by parkAfter, but the pair is closing now:
			// Next waits under the deadline restored above.
			return false, nil
		}
	}
	return pr.park(d), nil
}

// mayPark reports whether d could be handed to the poller now.
func (pr *pair) mayPark(d *direction) bool {
	return pr.p.poller() != nil && d.fd >= 0 && d.r.Buffered() == 0 && !d.timed && !d.s.InMessage() &&
		!pr.closing.Load() && !pr.ended.Load()
}

// park gives d to the poller when it has nothing buffered and nothing
// pending: no open message (MessageTimeout's deadline needs a reader), no
// close handshake under way. It reports whether d was handed over, after
// which the calling goroutine must leave d alone.
func (pr *pair) park(d *direction) bool {
	if !pr.mayPark(d) {
		return false
	}
	pl := pr.p.poller()
	d.r.Release()
	d.state.Store(parked)
	if pl.park(d) == nil {
		return true
	}
	// Not parked; unless a wake claimed d meanwhile, keep serving it.
	return !d.state.CompareAndSwap(parked, running)
}
