package limit

import (
	"context"
	"sync/atomic"
	"time"
)

// deadlineStep is how long decisions share one deadline context.
const deadlineStep = 5 * time.Millisecond

// deadlines hands out the contexts that bound the Redis calls of message
// decisions. A context.WithTimeout per decision starts a runtime timer per
// message, and a timer that becomes the process's earliest wakes the thread
// sleeping in the network poller: at low load, a context switch per message
// for a deadline that almost never fires. Decisions that start within the
// same deadlineStep share one context instead, whose deadline is Timeout
// after the end of that step: each call gets between Timeout and Timeout +
// deadlineStep.
type deadlines struct {
	timeout time.Duration
	cur     atomic.Pointer[sharedDeadline]
}

type sharedDeadline struct {
	ctx    context.Context
	cancel context.CancelFunc // released by the deadline itself; kept for vet
	start  time.Time
}

func noCancel() {}

// context returns the context of a Redis call made for parent, and the
// time the call starts (for the node's health, see health.failed). A
// parent that can be canceled gets a context of its own.
func (d *deadlines) context(parent context.Context) (context.Context, context.CancelFunc, time.Time) {
	now := time.Now()
	if parent.Done() != nil {
		ctx, cancel := context.WithDeadline(parent, now.Add(d.timeout))
		return ctx, cancel, now
	}
	if s := d.cur.Load(); s != nil {
		if age := now.Sub(s.start); age >= 0 && age < deadlineStep {
			return s.ctx, noCancel, now
		}
	}
	// Two decisions may both start a step here; each then uses its own.
	ctx, cancel := context.WithDeadline(context.Background(), now.Add(deadlineStep+d.timeout))
	d.cur.Store(&sharedDeadline{ctx: ctx, cancel: cancel, start: now})
	return ctx, noCancel, now
}
