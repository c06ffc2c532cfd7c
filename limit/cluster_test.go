package limit

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestCluster runs the counting paths on a 3-master Redis Cluster, where a
// rule's user and IP keys live in different slots: the two scripts are
// pipelined and a refusal refunds the other rule.
func TestCluster(t *testing.T) {
	nodes, url := startCluster(t)
	cli := func(args ...string) string {
		return nodes[0].cli(append([]string{"-c"}, args...)...)
	}
	t.Run("mode", func(t *testing.T) {
		l := newLimiter(t, Config{RedisURL: url, Timeout: testTimeout})
		rs := l.rs.Load()
		if rs == nil || !rs.cluster {
			t.Fatal("not a cluster client")
		}
		// The two rules' keys must really be apart for the test to mean anything.
		if cli("cluster", "keyslot", "t:um:{u}") == cli("cluster", "keyslot", "t:im:{a}") {
			t.Fatal("user and ip keys share a slot")
		}
	})
	t.Run("exact", func(t *testing.T) { testExact(t, url) })
	t.Run("semantics", func(t *testing.T) { runSemantics(t, redisHarness(url)) })
	t.Run("refund", func(t *testing.T) { testRefund(t, url, cli) })
	// rueidis dials every address of the URL at start and, when the slot
	// map it read first already holds a connection to an address, closes
	// the one dialed for it: a connection closing is a flush for lease
	// mode (its block keys' tracking may be gone), which drops the slices
	// with their units, and the cases count units exactly. One seed
	// address leaves nothing to close.
	seed, _, _ := strings.Cut(url, "?")
	t.Run("lease semantics", func(t *testing.T) { runSemantics(t, leaseHarness(seed, 2)) })
	t.Run("lease window", func(t *testing.T) { testLeaseWindow(t, url) })
	t.Run("open conn", func(t *testing.T) { testOpenConn(t, url, cli) })
	t.Run("admin", func(t *testing.T) { runAdminCases(t, redisAdminHarness(url)) })
	t.Run("admin replicas", func(t *testing.T) { testAdminReplicas(t, url, cli, ModeExact) })
	t.Run("admin keys", func(t *testing.T) { testAdminKeys(t, url, cli) })
	t.Run("cached block", func(t *testing.T) {
		l := newLimiter(t, Config{RedisURL: url, KeyPrefix: keyPrefix(t), Timeout: testTimeout, Rules: Rules{
			UserMessages: rate(2, 10*time.Second, 300*ms),
			IPMessages:   rate(100, 10*time.Second, 300*ms),
		}})
		ctx := context.Background()
		h := &harness{store: "redis"}
		h.allow(t, l, 2, "u", "a")
		h.deny(t, l, "u", "a", ScopeUser, KindMessage, 300*ms)
		h.check(t, l.Handshake(ctx, "u", "b"), ScopeUser, KindMessage, 300*ms)
		time.Sleep(350 * ms)
		h.allow(t, l, 2, "u", "a")
	})
}
