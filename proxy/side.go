package proxy

import (
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"

	"github.com/holo/wsgate/frames"
	"github.com/holo/wsgate/internal/netpoll"
)

// side is one of a pair's two connections. It is read by one direction
// and written by the other (pair's doc comment); the fields below say which
// owner writes them.
type side struct {
	// Conn is the connection, while the runtime holds it: nil once the
	// gate owns the socket's descriptor (owned).
	net.Conn
	// fd is the socket's descriptor, read and written without the
	// runtime's help and held by the poller; -1 when the connection is not
	// a plain socket (TLS, a wrapper). It also decides whether the side can
	// be shut down without closing its descriptor (hangUp).
	fd int32
	// owned says that fd is the gate's alone (netpoll.Own): the runtime
	// has let go of the socket, and a direction that must wait for it
	// blocks in the poller (source, sink) instead of in Conn.
	owned  bool
	masked bool // frames to this side are masked: it is the upstream

	// Written by the direction that writes to this side.
	closeSent bool          // a close frame went out
	closeCode ws.StatusCode // the code it carried
	broken    bool          // a write failed or cut a frame short: nothing more can be written

	// steps counts the two halves of this side's closing handshake, its
	// close frame read and one written to it; the direction that completes
	// both hangs the side up (RFC 6455 section 7.1.1: the TCP connection
	// ends once the Close frames have crossed).
	steps atomic.Int32
}

// halfCloser is a connection that can stop reading and writing without
// releasing its descriptor.
type halfCloser interface {
	CloseRead() error
	CloseWrite() error
}

// init sets the side up for c. With own set (there is a poller to wait
// in), a plain socket is taken from the runtime: its registration in the
// runtime's poller would report every segment a second time, and its
// state costs about a kilobyte per connection.
func (s *side) init(c net.Conn, masked, own bool) {
	s.Conn, s.fd, s.masked = c, -1, masked
	if nc, ok := c.(*netpoll.Conn); ok {
		// Dialed in the poller: the gate's alone already (newPair hands its
		// registration to the direction that reads it).
		s.Conn, s.fd, s.owned = nil, int32(nc.FD()), true
		return
	}
	sc, ok := c.(syscall.Conn)
	if _, half := c.(halfCloser); !ok || !half {
		return
	}
	if own {
		if fd, err := netpoll.Own(c); err == nil {
			s.Conn, s.fd, s.owned = nil, int32(fd), true
			return
		}
		// No descriptor to spare (the runtime keeps the connection): the
		// socket is read directly and waited for in Conn, as below.
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	fd := -1
	if rc.Control(func(f uintptr) { fd = int(f) }) != nil {
		return
	}
	s.fd = int32(fd)
}

// hangUp ends the connection at once: the peer sees it end (FIN), writes
// fail, and reads return what was already received, then EOF. A socket is
// shut down rather than closed, so that its descriptor number stays taken
// until the pair is finished and the poller has let go of it: closed
// earlier, the number could be handed to a new connection that the old
// pair's poller registration would then reach. Any goroutine may call it
// while the pair is not finished: a direction, or one that holds the
// proxy's lock (finish closes the descriptors under it).
func (s *side) hangUp() {
	switch {
	case s.owned:
		netpoll.Shutdown(int(s.fd))
	case s.fd >= 0:
		hc := s.Conn.(halfCloser)
		_ = hc.CloseWrite()
		_ = hc.CloseRead()
	default:
		// Not a socket the poller holds: closing it is safe.
		closeNow(s.Conn)
	}
}

// close releases the connection for good.
func (s *side) close() {
	if s.owned {
		netpoll.Close(int(s.fd))
		return
	}
	closeNow(s.Conn)
}

// closeNow closes c without waiting, as hangUp and close must: they may
// run under the proxy's lock. A TLS connection's own Close first writes
// its close_notify alert, waiting up to five seconds for a peer that does
// not read; the connection under it is closed instead, after the closing
// handshake has ended the WebSocket connection.
func closeNow(c net.Conn) {
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = tc.NetConn()
	}
	_ = c.Close()
}

// step records one half of the closing handshake and hangs the side up
// once both are done.
func (s *side) step() {
	if s.steps.Add(1) == 2 {
		s.hangUp()
	}
}

// errAborted is what a direction's blocking read or write returns once the
// pair was aborted: it must not wait for anything any more.
var errAborted = errors.New("pair aborted")

// errLookAgain is what a direction's blocking read for the rest of a frame
// header returns when the pair's ending woke it: the header's bytes stay
// buffered, and the direction looks at the ending before it reads on.
var errLookAgain = errors.New("pair ending: look again")

// source is the blocking reader of a direction's source: the Reader calls
// it only when it must wait, after it found nothing ready.
type source direction

func (s *source) Read(p []byte) (int, error) {
	d := (*direction)(s)
	src := d.src()
	if !src.owned {
		if err := d.beforeBlock(false); err != nil {
			return 0, err
		}
		return src.Conn.Read(p)
	}
	// The wait may take the wake that the direction's next park would
	// otherwise see: the direction must read before it parks.
	d.quiet = false
	until := int64(-1)
	for {
		n, err := frames.ReadSocket(int(src.fd), p)
		if err != frames.ErrWouldBlock {
			return n, err
		}
		if err := d.block(false, &until); err != nil {
			return 0, err
		}
		if d.inHeader && d.pr.life.load() == phaseEnding {
			// Woken by the pair's ending between frames (the bytes of a
			// header are only buffered, nothing of the frame relayed):
			// the direction looks at it now, and owes its close at once.
			return 0, errLookAgain
		}
	}
}

// sink writes a direction's frames to its destination: at once what the
// socket's buffer takes, and, when it is full, the rest once it has room:
// waiting in the poller for a socket the gate owns, in Conn (after the
// direction's beforeBlock) for one the runtime holds.
type sink direction

func (s *sink) Write(p []byte) (int, error) {
	d := (*direction)(s)
	dst := d.dst()
	n, until := 0, int64(-1)
	for dst.fd >= 0 {
		// The descriptor stays open while a direction runs: only
		// finish closes it, after both have left (pair's doc comment).
		k, err := frames.WriteReady(int(dst.fd), p[n:])
		n += k
		if err != nil || n == len(p) {
			return n, err
		}
		if !dst.owned {
			break
		}
		if err := d.block(true, &until); err != nil {
			return n, err
		}
	}
	if err := d.beforeBlock(true); err != nil {
		return n, err
	}
	k, err := dst.Conn.Write(p[n:])
	return n + k, err
}

// block waits in the poller until the socket d reads (write false) or the
// one it writes (write true) may be ready, d is kicked, or the wait's
// deadline passes (an error that isTimeout recognizes). until holds that
// deadline: -1 until the first wait of a read or write computes it, so that
// the waits of one call share it, as they would share a socket's deadline.
// The socket is registered by the direction that reads it: d's own, or the
// other's.
func (d *direction) block(write bool, until *int64) error {
	deadline, err := d.deadline(write)
	if err != nil {
		return err
	}
	if *until < 0 {
		*until = deadline
	}
	desc := &d.desc
	if write {
		desc = &d.other().desc
	}
	return d.pr.p.pl.Block(desc, write, *until)
}

// beforeBlock runs right before d blocks in a socket that the runtime
// holds: it sets that socket's deadline from the pair's state, only here,
// by d, so no other goroutine's deadline is ever overwritten. A kick that
// lands after it (pair.abort sets past deadlines after publishing the
// phase) still ends the wait; one published before it is seen by the check
// that follows.
func (d *direction) beforeBlock(write bool) error {
	deadline, err := d.deadline(write)
	if err != nil {
		return err
	}
	t := time.Time{}
	if deadline != 0 {
		t = time.Unix(0, deadline)
	}
	if write {
		_ = d.dst().SetWriteDeadline(t)
	} else {
		_ = d.src().SetReadDeadline(t)
	}
	if d.pr.life.load() == phaseAborted {
		return errAborted // aborted while the deadline was set
	}
	return nil
}

// deadline runs right before d waits for one of its sockets: a read of its
// source (the rest of a frame, or, for a source the poller cannot hold,
// the next frame) or a write to its destination whose buffer is full. It
// lets d's pool worker go (the wait may be long) and returns when the wait
// must end, in unix nanoseconds (0: no deadline), computed from the pair's
// state, or errAborted when the pair is aborted and nothing may wait.
func (d *direction) deadline(write bool) (int64, error) {
	pr := d.pr
	p := pr.p
	if p.pl != nil {
		p.pl.Detach(&d.desc)
	}
	var t int64
	if write {
		if wt := p.cfg.WriteTimeout; wt > 0 && d.dst() == &pr.client {
			t = time.Now().Add(wt).UnixNano()
		}
	} else {
		switch {
		case d.idle:
			// A header's wait that no kick ends (readMore): look at the
			// pair's state once per keeper tick. A message's deadline is
			// the keeper's to enforce then (messageTimeoutEnding).
			t = time.Now().Add(p.tick).UnixNano()
		case d.msgDeadline.Load() != 0:
			t = d.msgDeadline.Load()
		}
	}
	if pr.life.load() == phaseAborted {
		return 0, errAborted
	}
	return t, nil
}

// writeClose writes the gate's own close frame to d's destination, after
// text as a text frame when text is set and no message to that side is
// open, relayed or compressed by the gate (a data frame cannot go inside
// another message). Frames batched for that side go first.
func (d *direction) writeClose(text []byte, code ws.StatusCode, reason string) {
	dst := d.dst()
	if dst.closeSent || dst.broken {
		return
	}
	if d.flush() != nil {
		return
	}
	w := (*sink)(d)
	if text != nil && !d.s.InMessage() && !d.inDeflate {
		if err := frames.WriteFrame(w, ws.OpText, text, dst.masked); err != nil {
			d.broke()
			return
		}
	}
	if err := frames.WriteClose(w, code, reason, dst.masked); err != nil {
		d.broke()
		return
	}
	dst.closeSent, dst.closeCode = true, code
	dst.step()
}

// broke marks d's destination unusable after a failed write and hangs it
// up: its reader then sees the end instead of waiting for a close frame.
func (d *direction) broke() {
	d.dst().broken = true
	d.dst().hangUp()
}
