package proxy

import (
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"

	"github.com/holo/wsgate/internal/netpoll"
	"github.com/holo/wsgate/metrics"
)

// pair is one proxied connection: the client's socket and the upstream's,
// relayed by two directions (client → upstream, upstream → client).
//
// # One owner per socket operation
//
// Each direction reads one side and writes the other, and it is the only
// code that does either: it alone decides when a wait for its source or
// its destination ends, right before it waits (direction.deadline), in the
// poller for a socket the gate owns, or as the deadline of a socket the
// runtime holds (direction.beforeBlock). The frames the gate makes itself (keepalive
// pings, the 429 frame, close frames) are written by the direction that
// writes to that side, so no two goroutines ever write to one socket and no
// write needs a lock.
//
// A direction is run by at most one goroutine at a time. When its source
// has nothing to read it parks in the poller (internal/netpoll) and no
// goroutine holds it; a worker of the poller's bounded pool runs it again
// when bytes arrive or when it is kicked. A direction whose source the
// poller cannot hold (TLS, a wrapped connection, no poller on this
// platform) keeps a goroutine and looks at the pair's state at least once
// per keeper tick instead.
//
// # Everyone else publishes and kicks
//
// The other direction, the keeper and Shutdown never touch a direction's
// sockets beyond what a kick is: they publish into the pair's lifecycle
// (the phase, how it ends, the close deadline) and then kick the direction
// that must act (pair.kick): a poller wake, which also ends any wait in
// the poller for the direction's sockets, past deadlines for the sockets
// the runtime holds when the pair is aborted, a shutdown of a side that is
// gone. A direction looks at the lifecycle at every frame boundary, after
// it re-armed its poller registration and before every wait, so a kick is
// never lost: either the direction sees the state, or the wake finds it
// parked or waiting and runs it.
//
// # Closing
//
// A close frame from a peer is relayed and starts the close deadline. When
// the gate ends the pair (lifecycle.ending), the direction to the upstream
// sends the upstream its close at the next frame boundary, after the frames
// already allowed; the direction to the client relays the upstream's
// frames until the upstream answers (for a refusal or a drain) and then
// sends the client its close, or sends it at once (for a fault). Each side
// is hung up as soon as its close frames have crossed; the keeper aborts a
// pair whose close deadline passed, and, as a backstop that should never
// fire, forces one still open two close timeouts after it ended. The last
// direction to finish releases the pair (finish).
//
// # Descriptors
//
// Where there is a poller, the gate takes both plain sockets from the
// runtime when the pair is made (netpoll.Own): registered in the
// runtime's poller as well, every segment would be reported twice (5-7% of
// the gate's CPU on a busy relay), and the runtime's state for a socket
// costs about a kilobyte. A direction reads and writes its sockets'
// descriptors with plain system calls (frames.Reader.ReadReady,
// frames.ReadSocket, frames.WriteReady), and when it must wait for one it
// blocks in the poller (netpoll.Block). Each socket is registered by the
// direction that reads it before the directions start, and stays
// registered until finish: the other direction waits there for room to
// write. A TLS or wrapped connection stays with the runtime, read and
// written the same way when it is a socket, and waited for in its Conn.
//
// Hanging a side up shuts its socket down (shutdown(2)) and keeps its
// descriptor; only finish closes the descriptors, after both directions
// have left, under the proxy's lock (the keeper and Shutdown hang up the
// sides of the pairs they find under it): a descriptor number is never
// reached after it could have been reused.
type pair struct {
	p        *Proxy
	client   side
	upstream side

	fromClient   direction // client → upstream
	fromUpstream direction // upstream → client

	life      lifecycle
	live      atomic.Int32 // directions not finished yet
	deflating bool         // permessage-deflate negotiated with the client
	release   func()       // frees the client's slot of the concurrent-connection bound

	keep keeperState // the keeper's own bookkeeping; only the keeper touches it

	start  int64 // unix nanoseconds
	retire int64 // unix nanoseconds: closed then as a drain closes (MaxConnAge); 0: never
	expiry int64 // unix nanoseconds: the client's token's exp plus the leeway; zero without one
	// info is what the logs, the admin API and the rules need of the
	// connection beyond the relay's own state: out of the pair, which every
	// connection holds, to keep it in the 768-byte size class
	// (TestPairSize). Set by newPair; never nil.
	info *connInfo
}

func newPair(p *Proxy, client, upstream net.Conn, info *connInfo) *pair {
	now := time.Now().UnixNano()
	pr := &pair{p: p, start: now, retire: retireAt(now, p.cfg.MaxConnAge), info: info}
	own := p.started() != nil
	pr.client.init(client, false, own)
	pr.upstream.init(upstream, true, own)
	// The keeper's state is set before track shows the pair to the keeper.
	if ping := int32(p.cfg.PingInterval / time.Millisecond); ping > 0 {
		// Spread over the interval: connections opened together do not
		// all wake for their pings in the same tick.
		pr.keep.nextPing = 1 + uint32(rand.Int32N(ping))
	}
	pr.fromClient.init(pr, &pr.client, true)
	pr.fromUpstream.init(pr, &pr.upstream, false)
	// Registered when it was dialed (or accepted, by Serve): register
	// (below) has nothing to do.
	if nc, ok := client.(*netpoll.Conn); ok {
		nc.Handover(&pr.fromClient.desc)
	}
	if nc, ok := upstream.(*netpoll.Conn); ok {
		nc.Handover(&pr.fromUpstream.desc)
	}
	return pr
}

// run starts both directions and returns as soon as the client's direction
// has parked or finished (it runs on, past its budget, on this goroutine,
// which holds no worker of the poller); the last direction to finish
// releases the pair.
func (pr *pair) run() {
	p := pr.p
	p.m.ConnectionsActive.Inc()
	pr.live.Store(2)
	pr.register()
	p.spawn(&pr.fromUpstream)
	pr.fromClient.run()
}

// end publishes e as the way the pair ends, unless it ends already, and
// kicks both directions. A side that is gone (code 0) is hung up, so that a
// direction blocked on it returns.
func (pr *pair) end(e *ending) {
	if !pr.life.begin(e, time.Now(), pr.p.cfg.CloseTimeout) {
		return
	}
	if e.clientCode == 0 {
		pr.client.hangUp()
	}
	if e.upCode == 0 {
		pr.upstream.hangUp()
	}
	pr.kick()
}

// register adds the sockets to the poller before the directions start:
// from then on a direction may wait in it to write to the other's source.
// A socket the gate owns but cannot register could never be waited for:
// the pair is aborted.
func (pr *pair) register() {
	pl := pr.p.pl
	if pl == nil {
		return
	}
	for _, d := range [...]*direction{&pr.fromClient, &pr.fromUpstream} {
		if d.src().fd < 0 {
			continue
		}
		if err := pl.Register(&d.desc); err != nil {
			pr.p.log.Warn("relay: poller refused a socket", "err", err)
			d.noPoll = true
			if d.src().owned {
				pr.cut()
			}
		}
	}
}

// abort stops every wait of the pair: the directions write what they owe
// without blocking and finish.
func (pr *pair) abort() {
	if !pr.life.abort() {
		return
	}
	past := time.Unix(1, 0)
	for _, s := range [...]*side{&pr.client, &pr.upstream} {
		if !s.owned {
			_ = s.SetDeadline(past)
		}
	}
	pr.kick()
}

// cut aborts the pair and hangs up both of its sockets: Shutdown's end for
// what its grace left, the keeper's backstop, a socket the poller refused.
// Its callers hold the proxy's lock or run before the directions can
// finish: the descriptors are closed under that lock (finish).
func (pr *pair) cut() {
	pr.abort()
	pr.client.hangUp()
	pr.upstream.hangUp()
}

// kick makes both directions look at the pair's state: a parked one runs,
// a running one looks before it parks again.
func (pr *pair) kick() {
	pr.p.wake(&pr.fromClient)
	pr.p.wake(&pr.fromUpstream)
}

// finish releases a pair whose two directions have finished: nothing
// waits in the poller for its sockets any more, so they leave it and are
// closed. Everything else the pair holds is given back first: once the pair
// is out of the proxy's set (Active, the admin API), nothing of it remains.
// The descriptors are closed under the proxy's lock, in the same section
// that takes the pair out of the set, because the keeper and Shutdown hang
// up the sides of the pairs in the set under it.
func (pr *pair) finish() {
	p := pr.p
	if p.pl != nil {
		p.pl.Remove(&pr.fromClient.desc)
		p.pl.Remove(&pr.fromUpstream.desc)
	}
	if pr.release != nil {
		pr.release()
	}
	p.m.ConnectionsActive.Dec()
	p.conns.Add(-1)
	pr.report()
	p.mu.Lock()
	delete(p.pairs, pr)
	pr.client.close()
	pr.upstream.close()
	p.mu.Unlock()
	p.wg.Done()
}

// report counts the finished pair and writes its access log line.
func (pr *pair) report() {
	code := 1006
	if pr.client.closeSent {
		code = int(pr.client.closeCode)
	}
	initiator := pr.life.who()
	pr.p.m.Closes.WithLabelValues(initiator, metrics.CodeLabel(code)).Inc()
	pr.p.log.Info("connection closed",
		"client_ip", pr.info.ip.String(),
		"identity", pr.info.userKey,
		"path", pr.info.path,
		"protocol", pr.info.protocol,
		"duration_ms", time.Since(time.Unix(0, pr.start)).Milliseconds(),
		"messages_in", pr.fromClient.messages,
		"messages_out", pr.fromUpstream.messages,
		"bytes_in", pr.fromClient.bytes,
		"bytes_out", pr.fromUpstream.bytes,
		"close_code", code,
		"initiator", initiator,
	)
}

// prime hands the bytes that the handshake readers buffered past the
// handshakes to the directions.
func (pr *pair) prime(client, upstream []byte) {
	pr.fromClient.r.Prime(client)
	pr.fromUpstream.r.Prime(upstream)
}
