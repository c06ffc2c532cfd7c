package limit

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// failAfter is how many failures in a row mark a node down: one slow reply
// sends only its own decisions (one, or a batcher's group) to the failure
// mode. Only a call that began after the streak's previous failure extends
// it (see health.failed).
const failAfter = 3

// numSlots is the number of Redis Cluster hash slots.
const numSlots = 16384

// node is the health of one Redis node: a standalone or Sentinel master, or
// a Cluster master by address.
type node struct {
	addr  string // "" for the only node of a standalone client, or for slots no master serves
	fails atomic.Int32
	down  atomic.Bool
	// lastFail is when the streak's latest counted failure was recorded,
	// in nanoseconds since clockBase.
	lastFail atomic.Int64
}

// clockBase is the origin of node.lastFail's monotonic clock.
var clockBase = time.Now()

func sinceBase(t time.Time) int64 { return int64(t.Sub(clockBase)) }

func (n *node) isDown() bool { return n != nil && n.down.Load() }

func (n *node) name() string {
	if n.addr == "" {
		return "redis"
	}
	return n.addr
}

// nodeError is the error of a store call whose commands went to several
// nodes: failed says which counters' commands failed.
type nodeError struct {
	err    error
	failed [2]bool
}

func (e *nodeError) Error() string { return e.err.Error() }
func (e *nodeError) Unwrap() error { return e.err }

// health tracks the nodes of one Redis client. Decisions report each call's
// outcome to the nodes its keys live on (ok, failed); watchRedis probes the
// suspect nodes and, on a Cluster, refreshes the map of slots to nodes. A
// node's state is its count of failures in a row and its down flag, both
// atomic: any decision or the probe may record an outcome, and the flag
// changes (and is logged) once per transition, by CompareAndSwap.
type health struct {
	log  *slog.Logger
	mode FailureMode

	// single is the only node of a standalone or Sentinel client; nil on
	// a Cluster.
	single *node
	// slots maps each slot to its master on a Cluster; a slot no master
	// serves maps to unserved. Replaced whole by refresh.
	slots    atomic.Pointer[[numSlots]*node]
	unserved *node

	mu    sync.Mutex
	nodes map[string]*node // by address, on a Cluster
}

func newHealth(log *slog.Logger, mode FailureMode, cluster bool) *health {
	h := &health{log: log, mode: mode}
	if !cluster {
		h.single = &node{}
		return h
	}
	h.unserved = &node{}
	h.nodes = make(map[string]*node)
	var slots [numSlots]*node
	for i := range slots {
		slots[i] = h.unserved
	}
	h.slots.Store(&slots)
	return h
}

// of returns the node that holds the keys whose hash tag is id.
func (h *health) of(id string) *node {
	if h.single != nil {
		return h.single
	}
	return h.slots.Load()[slot(id)]
}

// ok records a call that succeeded on n (nil: no call). Only a decision
// that Redis answered reports it (Decision.answered).
func (h *health) ok(n *node) {
	if n != nil && n.fails.Load() != 0 {
		n.fails.Store(0)
	}
}

// failed records a call begun at start that failed on n, and reports
// whether that marked n down. The calls caught in one stall (a pause of
// Redis or of this process, a burst queued behind a slow reply) fail
// together and count once: a failure counts only when its call began after
// the streak's previous counted failure, so a node that stays unreachable
// is marked down by the third call in a row to fail after the one before it
// failed, and a busy gate's concurrent timeouts do not mark a node down
// that answers the calls that follow.
func (h *health) failed(n *node, start time.Time, err error) bool {
	if n == nil {
		return false
	}
	for {
		last := n.lastFail.Load()
		if sinceBase(start) < last {
			return false
		}
		if n.lastFail.CompareAndSwap(last, sinceBase(time.Now())) {
			break
		}
	}
	if n.fails.Add(1) < failAfter || !n.down.CompareAndSwap(false, true) {
		return false
	}
	h.log.Warn("redis node unreachable, limiting its keys with the failure mode",
		"node", n.name(), "failure_mode", h.mode.String(), "failures", failAfter, "err", err)
	return true
}

// up marks n healthy again after a probe.
func (h *health) up(n *node) {
	n.fails.Store(0)
	if n.down.CompareAndSwap(true, false) {
		h.log.Info("redis node reachable, limiting its keys with redis", "node", n.name())
	}
}

// anyUp reports whether some node is not marked down.
func (h *health) anyUp() bool {
	if h.single != nil {
		return !h.single.down.Load()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, n := range h.nodes {
		if !n.down.Load() {
			return true
		}
	}
	return len(h.nodes) == 0 && !h.unserved.down.Load()
}

// suspects returns the nodes marked down or with a failure since their
// last success.
func (h *health) suspects() []*node {
	suspect := func(n *node) bool { return n.down.Load() || n.fails.Load() > 0 }
	if h.single != nil {
		if suspect(h.single) {
			return []*node{h.single}
		}
		return nil
	}
	var out []*node
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, n := range h.nodes {
		if suspect(n) {
			out = append(out, n)
		}
	}
	if suspect(h.unserved) {
		out = append(out, h.unserved)
	}
	return out
}

// probe PINGs each suspect node: one that answers within the decisions'
// timeout is up, with no failure counted; one that does not counts a
// failure, as a decision would, so that a node that died is marked down
// without waiting for traffic, and a node slower than the decisions may
// wait is not marked up only for the next decisions to wait out their
// timeout again. On a Cluster it first reloads the slot map; unserved is
// up again once every slot has a master.
func (h *health) probe(ctx context.Context, c rueidis.Client, within time.Duration) {
	clients := map[string]rueidis.Client{"": c}
	if h.single == nil {
		if err := h.refresh(ctx, c); err != nil {
			h.log.Debug("redis cluster slots unknown", "err", err)
			return
		}
		clients = c.Nodes()
	}
	for _, n := range h.suspects() {
		if n == h.unserved {
			continue
		}
		nc := clients[n.addr]
		if nc == nil && strings.HasPrefix(n.addr, ":") {
			nc = byPort(clients, n.addr)
		}
		if nc == nil {
			continue
		}
		start := time.Now()
		err := nc.Do(ctx, nc.B().Ping().Build()).Error()
		if took := time.Since(start); err == nil && within > 0 && took > within {
			err = fmt.Errorf("ping answered in %v, over the timeout %v", took.Round(time.Millisecond), within)
		}
		if err != nil {
			h.failed(n, start, err)
		} else {
			h.up(n)
		}
	}
}

// nodeAddr names a master of CLUSTER SLOTS as rueidis names its connection
// to it, so that probe finds it among the client's nodes: host and port
// joined, an IPv6 host in brackets. An unknown endpoint (null or empty: a
// master behind a load balancer, whose clients are to use the address they
// asked with the port given) makes ":port", which rueidis names after the
// address it asked and probe finds by its port (byPort).
func nodeAddr(host string, port int64) string {
	return net.JoinHostPort(host, strconv.FormatInt(port, 10))
}

// byPort returns the only client of clients whose name ends in suffix
// (":port"), or nil when none or several do.
func byPort(clients map[string]rueidis.Client, suffix string) rueidis.Client {
	var found rueidis.Client
	for name, c := range clients {
		if strings.HasSuffix(name, suffix) {
			if found != nil {
				return nil
			}
			found = c
		}
	}
	return found
}

// refresh reloads the Cluster's map of slots to masters (CLUSTER SLOTS).
func (h *health) refresh(ctx context.Context, c rueidis.Client) error {
	msgs, err := c.Do(ctx, c.B().ClusterSlots().Build()).ToArray()
	if err != nil {
		return fmt.Errorf("cluster slots: %w", err)
	}
	var slots [numSlots]*node
	for i := range slots {
		slots[i] = h.unserved
	}
	served := 0
	h.mu.Lock()
	seen := make(map[string]bool, len(h.nodes))
	for _, m := range msgs {
		r, err := m.ToArray()
		if err != nil || len(r) < 3 {
			continue
		}
		lo, err1 := r[0].AsInt64()
		hi, err2 := r[1].AsInt64()
		master, err3 := r[2].ToArray()
		if err1 != nil || err2 != nil || err3 != nil || len(master) < 2 || lo < 0 || hi >= numSlots || lo > hi {
			continue
		}
		host, _ := master[0].ToString()
		port, _ := master[1].AsInt64()
		if host == "?" {
			// Hostnames announced but none set: no client can reach it.
			continue
		}
		addr := nodeAddr(host, port)
		n := h.nodes[addr]
		if n == nil {
			n = &node{addr: addr}
			h.nodes[addr] = n
		}
		seen[addr] = true
		for s := lo; s <= hi; s++ {
			slots[s] = n
		}
		served += int(hi - lo + 1)
	}
	for addr := range h.nodes {
		if !seen[addr] {
			delete(h.nodes, addr)
		}
	}
	h.mu.Unlock()
	h.slots.Store(&slots)
	if served == numSlots {
		h.up(h.unserved)
	}
	return nil
}

// slot returns the Cluster hash slot of the keys whose hash tag is id: the
// CRC16 (XMODEM) of id modulo 16384.
func slot(id string) uint16 {
	var crc uint16
	for i := 0; i < len(id); i++ {
		crc = crc<<8 ^ crc16tab[byte(crc>>8)^id[i]]
	}
	return crc % numSlots
}

var crc16tab = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()
