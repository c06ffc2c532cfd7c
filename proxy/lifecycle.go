package proxy

import (
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/holo/wsgate/frames"
	"github.com/holo/wsgate/metrics"
)

// Phases of a pair.
const (
	// phaseOpen: frames flow both ways. A close frame from either peer starts
	// the closing handshake (the close deadline is set) but frames still
	// flow until each peer's close frame has passed.
	phaseOpen int32 = iota
	// phaseEnding: the gate decided how the pair ends (a refusal, a fault, a
	// timeout, shutdown) and lifecycle.end says what each side is told.
	phaseEnding
	// phaseAborted: the close deadline passed. Nobody waits for anything any
	// more: each direction writes what it owes without blocking and
	// finishes.
	phaseAborted
)

// lifecycle is the part of a pair that more than one goroutine writes: the
// phase, how the pair ends, who started it, and the close deadline. It is
// how the two directions, the keeper and Shutdown tell each other what
// happened; each direction reads it at every frame boundary and before it
// parks or blocks, and acts on it for the sockets it owns.
//
// Invariants:
//   - The phase only moves forward: open, ending, aborted.
//   - end is set once, before the phase leaves open: a goroutine that has
//     loaded a phase past open finds it set.
//   - Whoever moves the phase kicks both directions after the move
//     (pair.kick), never before, so a direction that parks after looking
//     at the state cannot miss it.
type lifecycle struct {
	phase     atomic.Int32
	initiator atomic.Int32           // who started the close: 0 until known, then an initiator+1
	end       atomic.Pointer[ending] // how the pair ends; nil while open
	closeBy   atomic.Int64           // unix nanoseconds: the keeper aborts the pair then; 0 while no close is under way
}

// Initiators, the values of closes_total{initiator}, by index.
var initiators = [...]string{metrics.InitiatorClient, metrics.InitiatorUpstream, metrics.InitiatorGate}

const (
	byClient int32 = iota
	byUpstream
	byGate
)

// ending says how a pair ends: what each side is told (code 0: nothing,
// that side is gone and is hung up) and who caused it.
type ending struct {
	initiator    int32
	clientText   []byte // a text frame sent to the client before its close frame
	clientCode   ws.StatusCode
	clientReason string
	// afterUpstream: the client is told only once the upstream has answered
	// its close frame (or the close deadline passed), and every frame the
	// upstream sends until then still reaches the client: a refused or
	// drained client loses none of the replies it was owed.
	afterUpstream bool
	upCode        ws.StatusCode
	upReason      string
}

func (l *lifecycle) load() int32 { return l.phase.Load() }

// ending returns how the pair ends; only valid once the phase left open.
func (l *lifecycle) ending() *ending { return l.end.Load() }

// begin publishes e as the pair's ending, unless it has one, and starts the
// close deadline. It reports whether e was taken.
func (l *lifecycle) begin(e *ending, now time.Time, closeTimeout time.Duration) bool {
	if !l.end.CompareAndSwap(nil, e) {
		return false
	}
	l.setInitiator(e.initiator)
	l.phase.CompareAndSwap(phaseOpen, phaseEnding)
	l.closing(now, closeTimeout)
	return true
}

// closing starts (or extends) the close deadline: now plus closeTimeout.
func (l *lifecycle) closing(now time.Time, closeTimeout time.Duration) {
	t := now.Add(closeTimeout).UnixNano()
	for {
		old := l.closeBy.Load()
		if old >= t || l.closeBy.CompareAndSwap(old, t) {
			return
		}
	}
}

// abort moves the pair to aborted, with closeTimeoutEnding as its ending if
// it had none. It reports whether this call did it.
func (l *lifecycle) abort() bool {
	if l.end.CompareAndSwap(nil, &closeTimeoutEnding) {
		l.setInitiator(closeTimeoutEnding.initiator)
	}
	return l.phase.Swap(phaseAborted) != phaseAborted
}

// setInitiator records who started the close, unless it is known.
func (l *lifecycle) setInitiator(who int32) {
	l.initiator.CompareAndSwap(0, who+1)
}

// who names who started the close (the gate when nobody did).
func (l *lifecycle) who() string {
	if i := l.initiator.Load(); i > 0 {
		return initiators[i-1]
	}
	return metrics.InitiatorGate
}

// The endings the gate decides. Refusals and drains tell the client after
// the upstream has answered (afterUpstream); faults of one side tell the
// other side at once.
var (
	closeTimeoutEnding = ending{initiator: byGate,
		clientCode: ws.StatusGoingAway, clientReason: "close timeout",
		upCode: ws.StatusGoingAway, upReason: "close timeout"}
	idleEnding = ending{initiator: byGate, afterUpstream: true,
		clientCode: ws.StatusGoingAway, clientReason: "idle timeout",
		upCode: ws.StatusGoingAway, upReason: "idle timeout"}
	expiredEnding = ending{initiator: byGate, afterUpstream: true,
		clientCode: ws.StatusPolicyViolation, clientReason: "token expired",
		upCode: ws.StatusGoingAway, upReason: "token expired"}
	messageTimeoutEnding = ending{initiator: byGate, afterUpstream: true,
		clientCode: ws.StatusPolicyViolation, clientReason: "message timeout",
		upCode: ws.StatusGoingAway, upReason: "client error"}
	controlRateEnding = ending{initiator: byGate, afterUpstream: true,
		clientCode: ws.StatusPolicyViolation, clientReason: "too many control frames",
		upCode: ws.StatusGoingAway, upReason: "client error"}
	deniedEnding = ending{initiator: byGate, afterUpstream: true,
		clientCode: ws.StatusPolicyViolation, clientReason: "denied",
		upCode: ws.StatusGoingAway, upReason: "client denied"}
	pingTimeoutEnding = ending{initiator: byGate,
		clientCode: ws.StatusGoingAway, clientReason: "ping timeout",
		upCode: ws.StatusGoingAway, upReason: "client went away"}
	clientGoneEnding = ending{initiator: byClient,
		upCode: ws.StatusGoingAway, upReason: "client went away"}
	clientSlowEnding = ending{initiator: byGate,
		upCode: ws.StatusGoingAway, upReason: "client too slow"}
	upstreamGoneEnding = ending{initiator: byUpstream,
		clientCode: frames.StatusBadGateway, clientReason: "upstream went away"}
)
