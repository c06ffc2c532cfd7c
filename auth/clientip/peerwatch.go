package clientip

import (
	"net"
	"net/netip"
	"sync"
)

// PeerWatch watches the peers of a listener's connections (Observe each
// as it is accepted) and warns once when the first n all came from one
// private address (RFC 1918, RFC 4193). Without trusted proxies such a
// peer is most likely a proxy in front of the gate (an ingress, a load
// balancer): the gate then sees it as the client, and every per-IP rule
// applies to all of its clients at once. The watch ends after n
// connections, or at the first from another or a public address; loopback
// peers (a local test, a developer's browser) end it too.
type PeerWatch struct {
	n    int
	warn func(netip.Addr)

	mu    sync.Mutex
	done  bool
	first netip.Addr
	seen  int
}

// NewPeerWatch returns a watch that runs warn with the peer at the n-th
// connection in a row from it.
func NewPeerWatch(n int, warn func(peer netip.Addr)) *PeerWatch {
	return &PeerWatch{n: n, warn: warn}
}

// Observe counts one connection from peer; at the n-th in a row from the
// same private address it runs warn, on the calling goroutine.
func (w *PeerWatch) Observe(peer net.Addr) {
	if w.observe(peer) {
		w.warn(w.first)
	}
}

func (w *PeerWatch) observe(peer net.Addr) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return false
	}
	a, ok := addrOf(peer)
	if !ok || !a.IsPrivate() || w.seen > 0 && a != w.first {
		w.done = true
		return false
	}
	w.first = a
	w.seen++
	w.done = w.seen == w.n
	return w.done
}
