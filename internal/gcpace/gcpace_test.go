package gcpace

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 25},            // nothing measured yet
		{1 * mib, 400},     // 4 MiB floor over 1 MiB live
		{3 * mib, 133},     // the handshake benchmark's heap
		{16 * mib, 25},     // 25% is 4 MiB: the floor no longer counts
		{100 * mib, 25},    // thousands of connections
		{100 * 1024, 1000}, // capped
	} {
		if got := Percent(25, 4*mib, c.live); got != c.want {
			t.Errorf("Percent(25, 4 MiB, %d) = %d, want %d", c.live, got, c.want)
		}
	}
}

func TestNear(t *testing.T) {
	for _, c := range []struct {
		a, b int
		want bool
	}{{25, 25, true}, {133, 125, true}, {133, 100, false}, {25, 400, false}} {
		if got := near(c.a, c.b); got != c.want {
			t.Errorf("near(%d, %d) = %v", c.a, c.b, got)
		}
	}
}

func TestChange(t *testing.T) {
	for _, c := range []struct {
		set, want int
		ok        bool
	}{
		{25, 25, false},
		{133, 125, false}, // within an eighth
		{133, 100, true},
		{27, 25, true}, // near, but the base is restored exactly
		{25, 27, false},
	} {
		if got := change(c.set, c.want, 25); got != c.ok {
			t.Errorf("change(%d, %d, 25) = %v, want %v", c.set, c.want, got, c.ok)
		}
	}
}

// TestPacerFollowsLiveHeap runs the pacer in this process: with a small
// live heap and a floor above a quarter of it, it raises the percentage
// after a collection, and the runtime applies it; with a live heap whose
// quarter exceeds the floor it restores 25 exactly.
func TestPacerFollowsLiveHeap(t *testing.T) {
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)
	p := Start(25, 4<<20)
	defer p.Stop()
	waitFor(t, p, func() bool { return p.InForce() > 25 })
	if got, rt := p.InForce(), runtimePercent(); got < 100 || rt != got {
		t.Fatalf("percentage %d (runtime %d) with a small heap under a 4 MiB floor, want well above 25 and applied", got, rt)
	}
	// 24 MiB more live: a quarter of the heap is over the floor.
	keep := make([][]byte, 24)
	for i := range keep {
		keep[i] = make([]byte, 1<<20)
	}
	waitFor(t, p, func() bool { return p.InForce() == 25 })
	if rt := runtimePercent(); rt != 25 {
		t.Fatalf("runtime percentage %d, want 25", rt)
	}
	runtime.KeepAlive(keep)
}

// runtimePercent is the GC percentage the runtime is using.
func runtimePercent() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// waitFor collects until ok holds (the pacer acts once per collection), for at most 5 s.
func waitFor(t *testing.T, p *Pacer, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
		if ok() {
			return
		}
	}
	t.Fatalf("pacer did not adjust within 5s (percentage %d)", p.InForce())
}
