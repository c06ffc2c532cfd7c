package gcpace

import (
	"runtime"
	"runtime/debug"
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

// TestPacerFollowsLiveHeap runs the pacer in this process: with a small
// live heap and a large floor it raises the percentage after a collection;
// with a live heap whose 25% exceeds the floor it brings it back to 25.
func TestPacerFollowsLiveHeap(t *testing.T) {
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)
	p := Start(25, 16<<20)
	defer p.Stop()
	waitFor(t, p, func() bool { return p.InForce() > 25 })
	if got := p.InForce(); got < 200 {
		t.Fatalf("percentage %d with a small heap under a 16 MiB floor, want well above 25", got)
	}
	// 96 MiB live: 25% of it is 24 MiB, over the floor.
	keep := make([][]byte, 96)
	for i := range keep {
		keep[i] = make([]byte, 1<<20)
	}
	waitFor(t, p, func() bool { return near(p.InForce(), 25) }) // within the hysteresis
	runtime.KeepAlive(keep)
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
