// Package gcpace keeps the garbage collector's target proportional to the
// live heap, with a floor of headroom for a small heap.
//
// The gate's per-frame path allocates nothing, so what the collector paces
// is the connections' live state plus the garbage of handshakes. A low GC
// percentage keeps the memory an idle connection costs small, but with few
// connections open it makes the target tiny (25% of a 3 MiB heap is
// 0.75 MiB) and a burst of handshakes, about 20 KiB of garbage each, then
// collects every few dozen of them. The pacer raises the percentage so that
// the target is at least the live heap plus the floor, and brings it back
// to the base percentage once that share of the live heap exceeds the floor
// (for 15% and 4 MiB: above about 27 MiB live, some 12,000 connections).
package gcpace

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// maxPercent bounds the percentage the floor may ask for.
const maxPercent = 1000

// Pacer adjusts the GC percentage after each collection. Its zero value is
// not usable; see Start.
type Pacer struct {
	percent int
	floor   uint64
	sample  []metrics.Sample // touched by the finalizer goroutine only
	set     atomic.Int32     // the percentage in force, last given to debug.SetGCPercent
	stopped atomic.Bool
}

// sentinel is garbage on purpose: its finalizer runs after the collection
// that found it unreachable, which is how the pacer hears of each cycle.
// The pointer keeps it out of the tiny allocator, whose blocks may hold a
// finalized object alive for several cycles.
type sentinel struct{ p *Pacer }

// Start sets the GC percentage to percent and keeps the target at least
// floor bytes above the live heap from then on. It returns the Pacer so
// that a test can read it; the process runs it until exit.
func Start(percent int, floor uint64) *Pacer {
	p := &Pacer{
		percent: percent,
		floor:   floor,
		sample:  []metrics.Sample{{Name: "/gc/heap/live:bytes"}},
	}
	p.set.Store(int32(percent))
	debug.SetGCPercent(percent)
	p.arm()
	return p
}

func (p *Pacer) arm() {
	runtime.SetFinalizer(&sentinel{p: p}, func(s *sentinel) { s.p.cycle() })
}

// cycle runs on the finalizer goroutine once per collection.
func (p *Pacer) cycle() {
	if p.stopped.Load() {
		return
	}
	metrics.Read(p.sample)
	if want := Percent(p.percent, p.floor, p.sample[0].Value.Uint64()); change(int(p.set.Load()), want, p.percent) {
		debug.SetGCPercent(want)
		p.set.Store(int32(want))
	}
	p.arm()
}

// InForce is the GC percentage the pacer set last.
func (p *Pacer) InForce() int { return int(p.set.Load()) }

// Stop ends the adjustments: no collection after it changes the
// percentage, except one whose adjustment was already under way. The
// percentage in force stays.
func (p *Pacer) Stop() { p.stopped.Store(true) }

// Percent is the GC percentage that gives a heap of live bytes a target of
// max(live × percent/100, floor) bytes above it, within [percent, 1000].
func Percent(percent int, floor, live uint64) int {
	if live == 0 || live*uint64(percent)/100 >= floor {
		return percent
	}
	return int(min(max(floor*100/live, uint64(percent)), maxPercent))
}

// change reports whether the pacer replaces the percentage set with want.
// The hysteresis spares resets, but the base percentage is always
// restored: a heap that grew past the floor's reach gets it exactly.
func change(set, want, base int) bool {
	return want != set && (want == base || !near(want, set))
}

// near reports whether a and b differ by at most an eighth, so that a heap
// wavering around a boundary does not reset the percentage every cycle.
func near(a, b int) bool {
	d := a - b
	if d < 0 {
		d = -d
	}
	return d*8 <= max(a, b)
}
