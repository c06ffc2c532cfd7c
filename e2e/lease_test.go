//go:build e2e

package e2e

import (
	"fmt"
	"sync"
	"testing"

	"github.com/coder/websocket"
)

// TestLeaseTwoGatesBound runs two gate processes in lease mode on one Redis
// and bursts one identity's messages through both at once. The documented
// bound is N + (replicas-1) x slice per window should invalidations stall;
// slices are carved out of N only, so N is the ceiling here, and a replica
// that still holds unused units can make the key refuse early, by at most
// (replicas-1) x slice.
func TestLeaseTwoGatesBound(t *testing.T) {
	t.Parallel()
	const n, slice, replicas = 50, 5, 2
	rs := startRedisServer(t)
	b := newRecordingBackend(t)
	args := []string{"--redis-url", rs.URL(), "--redis-timeout", "2s", "--limit-mode", "lease",
		"--lease-size", fmt.Sprint(slice), "--user-rate", fmt.Sprintf("%d/30s", n), "--user-block", "30s", "--ip-rate", "0"}
	gates := []*Gate{limitGate(t, b.URL, args...), limitGate(t, b.URL, args...)}

	var wg sync.WaitGroup
	results := make([]burstResult, len(gates))
	conns := make([]*websocket.Conn, len(gates))
	for i, g := range gates {
		conns[i] = dialAs(t, g.URL+"/echo", peer{})
		wg.Go(func() { results[i] = burst(conns[i], msgs(fmt.Sprintf("gate%d", i), 40)) })
	}
	wg.Wait()
	for i, res := range results {
		t.Logf("gate %d: %d echoes, refused=%v, close %d", i, len(res.echoes), res.refused != nil, res.close.Code)
		if res.refused == nil {
			// All its messages passed: end it so the backend's count is final.
			_ = conns[i].Close(websocket.StatusNormalClosure, "")
		}
	}
	for range gates {
		b.nextClose(t)
	}
	got := b.msgs.Load()
	if got > n+(replicas-1)*slice {
		t.Fatalf("the backend received %d messages, over the lease bound N + (replicas-1) x slice = %d", got, n+(replicas-1)*slice)
	}
	if got > n {
		t.Errorf("the backend received %d messages, more than N = %d (slices come out of N only)", got, n)
	}
	if got < n-(replicas-1)*slice {
		t.Errorf("the backend received %d messages, fewer than N - (replicas-1) x slice = %d", got, n-(replicas-1)*slice)
	}
	refused := 0
	for _, res := range results {
		if res.refused != nil {
			refused++
		}
	}
	if refused == 0 {
		t.Errorf("no client was refused after 80 messages under %d/30s", n)
	}
}

// TestIPMaxConns bounds the connections one client IP holds open across
// two gate processes sharing Redis.
func TestIPMaxConns(t *testing.T) {
	t.Parallel()
	rs := startRedisServer(t)
	b := newRecordingBackend(t)
	args := []string{"--redis-url", rs.URL(), "--redis-timeout", "2s", "--ip-max-conns", "2"}
	a, c := limitGate(t, b.URL, args...), limitGate(t, b.URL, args...)

	first := dialAs(t, a.URL+"/echo", peer{})
	echoOK(t, first, "one")
	second := dialAs(t, c.URL+"/echo", peer{})
	echoOK(t, second, "two")
	// A third from the same IP, on either gate: 101, the JSON, 4008.
	third := dialAs(t, a.URL+"/echo", peer{})
	wantRefusal(t, third, "ip")
	waitMetric(t, a, mRateLimited, ipConn, 1)
	if got := b.conns.Load(); got != 2 {
		t.Fatalf("the backend accepted %d connections, want 2 (a refused handshake is never dialed)", got)
	}
	// Another IP is not affected.
	other := dialAs(t, c.URL+"/echo", peer{}.from("127.0.0.2"))
	echoOK(t, other, "other ip")
	// When one closes, its slot is free again.
	if err := first.Close(1000, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a slot to be released", func() bool {
		cn, _, err := tryDial(t, c.URL+"/echo", peer{})
		if err != nil {
			return false
		}
		res := burst(cn, []string{"again"})
		return len(res.echoes) == 1
	})
}
