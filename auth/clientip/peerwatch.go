package clientip

import (
	"net"
	"net/netip"
	"sync"
)

// WatchSinglePeer returns ln wrapped so that warn runs once, on the
// accepting goroutine, when the first n connections it accepted all came
// from one private address (RFC 1918, RFC 4193). Without trusted proxies
// such a peer is most likely a proxy in front of the gate (an ingress, a
// load balancer): the gate then sees it as the client, and every per-IP
// rule applies to all of its clients at once. The watch ends after n
// connections, or at the first from another or a public address; loopback
// peers (a local test, a developer's browser) end it too.
func WatchSinglePeer(ln net.Listener, n int, warn func(peer netip.Addr)) net.Listener {
	return &peerWatch{Listener: ln, n: n, warn: warn}
}

type peerWatch struct {
	net.Listener
	n    int
	warn func(netip.Addr)

	mu    sync.Mutex
	done  bool
	first netip.Addr
	seen  int
}

func (l *peerWatch) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if l.observe(c.RemoteAddr()) {
		l.warn(l.first)
	}
	return c, nil
}

// observe counts one connection from peer and reports whether it is the
// n-th in a row from the same private address.
func (l *peerWatch) observe(peer net.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return false
	}
	a, ok := addrOf(peer)
	if !ok || !a.IsPrivate() || l.seen > 0 && a != l.first {
		l.done = true
		return false
	}
	l.first = a
	l.seen++
	l.done = l.seen == l.n
	return l.done
}
