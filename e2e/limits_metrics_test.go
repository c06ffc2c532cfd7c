//go:build e2e

package e2e

import (
	"strconv"
	"testing"
)

// TestLimiterFallbackMetrics: with Redis unreachable under --failure-mode open, every decision
// (the handshake, the --ip-max-conns registration, the message) counts as a fallback, and none
// is recorded as a Redis latency: no store decided, the failure mode did.
func TestLimiterFallbackMetrics(t *testing.T) {
	t.Parallel()
	port := freePort(t) // nothing listens here
	b := newRecordingBackend(t)
	g := limitGate(t, b.URL, "--redis-url", "redis://127.0.0.1:"+strconv.Itoa(port), "--redis-timeout", "2s",
		"--failure-mode", "open", "--ip-max-conns", "5", "--user-rate", "100/30s", "--ip-rate", "0")

	c := dialAs(t, g.URL+"/echo", peer{})
	echoOK(t, c, "while Redis is down")
	// The handshake, the --ip-max-conns registration and the message fell
	// back; the registration is no decision of limiter_decisions_total.
	waitMetric(t, g, mFallback, nil, 3)
	waitMetric(t, g, mDecisions, decFallback, 2)
	if got := g.Metric(t, mDecisions, map[string]string{"cause": "fallback", "decision": "allowed"}); got != 2 {
		t.Errorf("%s{decision=allowed,cause=fallback} = %v, want 2: --failure-mode open allowed them", mDecisions, got)
	}
	if got := g.Metric(t, mDuration+"_count", map[string]string{"store": "redis"}); got != 0 {
		t.Errorf("%s_count{store=redis} = %v with Redis unreachable, want 0", mDuration, got)
	}
	// The handshake and the message; the registration is not timed.
	if got := g.Metric(t, mDuration+"_count", map[string]string{"store": "fallback"}); got != 2 {
		t.Errorf("%s_count{store=fallback} = %v, want 2", mDuration, got)
	}
}
