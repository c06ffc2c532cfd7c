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
	// A blocked user's message, from a stream that a refusal closes, must
	// not reach its IP rule: on a Cluster that is a script of its own,
	// which would count it (refunded later) and, at the IP's limit,
	// refuse and block every client of the IP.
	t.Run("blocked user, IP at its limit", func(t *testing.T) {
		p := keyPrefix(t)
		l := newLimiter(t, Config{RedisURL: url, KeyPrefix: p, Timeout: testTimeout, Rules: Rules{
			UserMessages: rate(1, 10*time.Second, 5*time.Second),
			IPMessages:   rate(3, 10*time.Second, 7*time.Second),
		}})
		ctx := ClosesOnRefusal(context.Background())
		h := &harness{store: "redis"}
		h.allow(t, l, 1, "u", "a")
		h.deny(t, l, "u", "a", ScopeUser, KindMessage, 5*time.Second)
		h.allow(t, l, 1, "v", "a")
		h.allow(t, l, 1, "w", "a") // the IP at its limit of 3
		// The invalidation of the user's cached "not blocked" may land
		// after the reply that blocked it.
		time.Sleep(50 * ms)
		h.check(t, l.Message(ctx, "u", "a"), ScopeUser, KindMessage, 5*time.Second)
		if got := cli("pttl", p+":im:{a}:blk"); got != "-2" {
			t.Fatalf("the IP's block key: pttl %s, want none: a blocked user's message blocked its IP", got)
		}
	})
}
