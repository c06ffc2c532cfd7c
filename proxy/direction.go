package proxy

import (
	"errors"
	"io"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/holo/wsgate/frames"
	"github.com/holo/wsgate/internal/netpoll"
)

// direction is one half of a pair: it reads frames from src and writes
// them to dst. It is run by one goroutine at a time (pair's doc comment);
// its fields are that goroutine's, except its atomics, which the keeper
// reads or sets.
type direction struct {
	pr        *pair
	desc      netpoll.Desc // its source's registration with the poller
	r         frames.Reader
	s         frames.Stream
	out       batch // frames for dst not written yet
	client    bool  // reads the client
	idle      bool  // waits for a header where no kick reaches it: looks at the pair once per keeper tick
	quiet     bool  // the last read emptied the socket and nothing woke d since
	noPoll    bool  // the poller refused the socket: d blocks on it instead
	srcDone   bool  // nothing more is read from src: its close frame came, or it ended
	inDeflate bool  // a compressed message to the client is open: its last frame not written
	inHeader  bool  // blocked for the rest of a frame header, none of the frame relayed
	dropping  bool  // the client message being read was dropped: its next frames are skipped
	ctlCount  int32 // control frames in the window of ControlFrameRate
	granted   int32 // messages the limiter has granted ahead
	discarded int32 // bytes read and dropped since the pair began to end (at most maxDrain)
	// attachments counts the binary attachments the upstream still owes
	// the socket.io packet it last began (engine.io connections only): no
	// notice goes to the client before they have.
	attachments int32

	ctlStart        int64 // unix nanoseconds: window of ControlFrameRate
	messages, bytes int64 // relayed to dst

	// msgDeadline is when the client message being read must be whole
	// (MessageTimeout), in unix nanoseconds; 0 while none is open. The
	// keeper enforces it while the direction is parked between fragments.
	msgDeadline atomic.Int64
	// pingDue is set by the keeper: the direction to the client writes a
	// keepalive ping at its next frame boundary.
	pingDue atomic.Bool
	// consumed counts the bytes of frames the gate answered itself (pongs
	// to its keepalive pings): read by the keeper, they are not activity.
	consumed atomic.Int64
}

func (d *direction) init(pr *pair, src *side, client bool) {
	d.pr, d.client = pr, client
	from := frames.Server
	if client {
		from = frames.Client
	}
	d.s = frames.Stream{From: from, MaxMessageBytes: pr.p.cfg.MaxMessageBytes}
	d.r.ResetSocket((*source)(d), int(src.fd)) // open until finish, after both directions left
	d.desc.Init(int(src.fd), d.run)
}

// src is the side d reads, dst the side it writes.
func (d *direction) src() *side {
	if d.client {
		return &d.pr.client
	}
	return &d.pr.upstream
}

func (d *direction) dst() *side {
	if d.client {
		return &d.pr.upstream
	}
	return &d.pr.client
}

// other is the pair's other direction: the one that reads d's destination.
func (d *direction) other() *direction {
	if d.client {
		return &d.pr.fromUpstream
	}
	return &d.pr.fromClient
}

// runBudget bounds the steps (frames handled, reads) of one run of a
// direction on the poller's workers. A source that always has bytes ready
// (a client sending small frames faster than the gate relays them, to an
// upstream that takes them at once) would otherwise keep its worker for as
// long as it sends; on the leading worker, no other socket's readiness
// would be looked at meanwhile, not even a new connection's dial. Past its
// budget a run goes to the back of the queue. A direction at a busy
// connection takes a few steps per run (the frames of one read); 256 small
// frames cost tens of microseconds, to which a hand-over adds a few.
const runBudget = 256

// run relays frames until d parks, finishes or, on a worker of the poller,
// has used its budget (requeue). It is the only way into a direction: its
// first run and every wake of the poller call it.
func (d *direction) run() {
	d.quiet = false // woken: there may be bytes
	for steps := 1; ; steps++ {
		if d.look() {
			d.finish()
			return
		}
		var err error
		if d.r.HeaderReady() {
			err = d.next()
		} else {
			var parked bool
			if parked, err = d.readMore(); parked {
				return
			}
		}
		if err != nil {
			d.stop(err)
		}
		if steps%runBudget == 0 && d.requeue() {
			return
		}
	}
}

// requeue ends a run that used its budget: d's batch is written, and its
// next run, which begins with a look at the pair, is queued behind the
// callbacks that wait for a worker. It reports whether it queued the run:
// the caller must then leave d alone. A direction on a goroutine that
// holds no worker (its own, or one that detached to block) runs on.
func (d *direction) requeue() bool {
	p := d.pr.p
	if !p.pooled(d) {
		return false
	}
	if err := d.flush(); err != nil {
		d.stop(err) // the next look, in this run or the next, acts on it
	}
	return p.pl.Requeue(&d.desc)
}

// look acts on what others published: a keepalive ping asked for, the pair
// ending (the close frame d owes its destination) or aborted. It reports
// whether d is finished: nothing more will be read from its source and it
// owes nothing.
func (d *direction) look() bool {
	pr := d.pr
	if d.pingDue.Load() && d.pingDue.Swap(false) && pr.life.load() == phaseOpen {
		d.ping()
	}
	if !d.client && d.relaying() {
		// A drop's notice goes out while the upstream's frames still
		// reach the client, the ending's relay included.
		d.sendNotice()
	}
	switch pr.life.load() {
	case phaseOpen:
		return d.srcDone
	case phaseAborted:
		// For a socket the runtime holds, abort's past deadline would
		// fail even a write that cannot block; no kick follows an abort,
		// and sink never waits once the pair is aborted (deadline).
		if dst := d.dst(); !dst.owned {
			_ = dst.SetWriteDeadline(time.Time{})
		}
		d.owe(true)
		return true
	}
	d.owe(false)
	return d.srcDone
}

// owe writes the close frame the pair's ending gives d's destination, if it
// is due: the upstream's at once, the client's at once or, for a refusal or
// a drain, once the upstream has answered. Once aborted nothing waits: a
// write the socket cannot take at once fails.
func (d *direction) owe(aborting bool) {
	e := d.pr.life.ending()
	if d.client {
		if e.upCode != 0 {
			d.writeClose(nil, e.upCode, e.upReason)
		}
		return
	}
	if e.clientCode == 0 || (e.afterUpstream && !d.srcDone && !aborting) || d.dst().closeSent {
		return
	}
	if !aborting {
		d.sendNotice() // a drop's notice not sent yet comes before the ending's
	}
	d.writeClose(e.clientText, e.clientCode, e.clientReason)
	if d.dst().closeSent {
		// The client gets a close timeout of its own to answer.
		d.pr.life.closing(time.Now(), d.pr.p.cfg.CloseTimeout)
	}
}

// relaying reports whether frames read from d's source still go to its
// destination: while the pair is open, and for the upstream's frames until
// the client is told, when it is told after the upstream has answered.
func (d *direction) relaying() bool {
	switch d.pr.life.load() {
	case phaseOpen:
		return true
	case phaseAborted:
		return false
	}
	e := d.pr.life.ending()
	return !d.client && e.afterUpstream && e.clientCode != 0 && !d.dst().closeSent && !d.dst().broken
}

// readMore reads more of the source when the next header is not buffered
// whole: what the socket has ready, else it parks (nothing buffered, and
// the poller can hold the socket) or blocks. It reports parked when d was
// handed to the poller: the caller must then leave d alone.
func (d *direction) readMore() (parked bool, err error) {
	if d.quiet && d.r.Buffered() == 0 {
		// The last read emptied the socket: the poller's edge-triggered
		// registration reports whatever arrived since, so a read now
		// would most likely find nothing.
		err = frames.ErrWouldBlock
	} else {
		err = d.r.ReadReady()
		d.quiet = err == nil && d.r.Emptied() && d.pr.p.pl != nil
	}
	if err == nil || (err != frames.ErrWouldBlock && err != frames.ErrNotSocket) {
		return false, err
	}
	// Nothing more for now: what was batched goes out before any wait.
	if err := d.flush(); err != nil {
		return false, err
	}
	if pl := d.pr.p.pl; pl != nil && !d.noPoll && err == frames.ErrWouldBlock && d.r.Buffered() == 0 {
		if hook := d.pr.p.hooks.beforePark; hook != nil {
			hook(d)
		}
		parked, err := pl.Wait(&d.desc)
		if err == nil {
			if !parked {
				d.quiet = false // kicked: read again
			}
			return parked, nil
		}
		// The socket cannot be registered: keep it on this goroutine.
		d.pr.p.log.Warn("relay: poller refused a socket", "err", err)
		d.noPoll = true
	}
	// Part of a header, or a source the poller cannot hold. A wait on such
	// a source (the runtime's, which no kick reaches) looks at the pair's
	// state once per keeper tick, between frames and inside a header alike
	// (the header's bytes stay buffered): an ending must not wait for the
	// rest of a header that may never come. A socket the gate owns is woken
	// by the ending instead (source.Read).
	d.idle = d.r.Buffered() == 0 || !d.src().owned
	d.inHeader = true
	err = d.r.ReadMore()
	idle := d.idle
	d.idle, d.inHeader = false, false
	if idle && isTimeout(err) && d.pr.life.load() != phaseAborted {
		return false, nil // the tick passed: look at the pair's state again
	}
	if err == errLookAgain {
		return false, nil
	}
	return false, err
}

// next reads and handles one frame, whose header is buffered.
func (d *direction) next() error {
	if !d.relaying() {
		return d.discard()
	}
	h, err := d.s.Next(&d.r)
	if err != nil {
		if h.OpCode == ws.OpClose {
			// A close frame is the peer's Close even when it is invalid.
			d.closeRead()
		}
		return err
	}
	switch {
	case h.OpCode == ws.OpClose:
		err = d.onClose(h)
	case h.OpCode.IsControl():
		err = d.onControl(h)
	case d.client:
		err = d.onClientData(h)
	default:
		err = d.onUpstreamData(h)
	}
	d.r.Release()
	if errors.Is(err, errCloseInMessage) {
		return nil
	}
	return err
}

// onClose handles a close frame from d's source.
func (d *direction) onClose(h ws.Header) error {
	pr := d.pr
	if pr.life.load() != phaseOpen {
		// The upstream answers the gate's close while its frames still go
		// to the client: the client is told by the gate (owe), not by this
		// frame.
		var buf [ws.MaxControlFramePayloadSize]byte
		_, err := d.s.ReadControl(&d.r, h, buf[:])
		d.closeRead()
		return err
	}
	// A peer closes: its close frame is relayed and the closing handshake
	// has a close timeout to complete.
	if d.client {
		pr.life.setInitiator(byClient)
	} else {
		pr.life.setInitiator(byUpstream)
	}
	pr.life.closing(time.Now(), pr.p.cfg.CloseTimeout)
	if err := d.flush(); err != nil {
		return err
	}
	c, err := d.s.Forward((*sink)(d), &d.r, h)
	d.closeRead()
	if err != nil {
		return d.writeFailed(err)
	}
	d.dst().closeSent, d.dst().closeCode = true, c.Code
	d.dst().step()
	return nil
}

// closeRead records that d's source sent its close frame.
func (d *direction) closeRead() {
	d.srcDone = true
	d.src().step()
}

// onControl handles a ping or a pong.
func (d *direction) onControl(h ws.Header) error {
	if d.client {
		if consumed, err := d.clientControl(h); consumed || err != nil {
			return err
		}
	}
	return d.forward(h)
}

// onClientData handles a data frame from the client: a new message is
// decided by the limiter and timed, then the frame is relayed.
func (d *direction) onClientData(h ws.Header) error {
	starts := frames.StartsMessage(h)
	if !starts && d.dropping {
		return d.drop(h)
	}
	if !starts && d.pr.p.cfg.Limiter != nil && d.limitedMore(h) {
		return d.skip()
	}
	if starts {
		// A scan is started by the message's class (classOf) and ended
		// where it settles the class (reclassed), or when the message goes
		// nowhere; one a message left (its pair ends) goes here.
		d.pr.info.rules.endScan()
		if d.pr.p.cfg.Limiter != nil {
			switch d.limited(h) {
			case refused:
				d.pr.info.rules.endScan()
				return d.skip()
			case dropped:
				d.pr.info.rules.endScan()
				d.timeMessage(h)
				return d.drop(h)
			}
		}
		d.timeMessage(h)
	}
	var err error
	switch {
	case starts && d.s.Compressed():
		err = d.inflate(h)
	case d.pr.info.rules != nil && d.pr.info.rules.scan != nil:
		// Once its scan settles, the rest of the message goes by forward.
		err = d.forwardScanned(h)
	default:
		err = d.forward(h)
	}
	if err == nil && (h.Fin || starts && d.s.Compressed()) {
		d.messageDone()
	}
	return err
}

// onUpstreamData handles a data frame from the upstream.
func (d *direction) onUpstreamData(h ws.Header) error {
	if d.pr.info.sio && frames.StartsMessage(h) {
		d.attachments = pendingAttachments(h, d.r.Peek(), d.attachments)
	}
	if frames.StartsMessage(h) && d.pr.deflating {
		return d.deflate(h)
	}
	return d.forward(h)
}

// forward relays the frame h. A frame whose payload is buffered joins the
// batch while the next header is buffered too: a burst of frames costs one
// write. Any other frame is written at once, after the batch.
func (d *direction) forward(h ws.Header) error {
	if int64(d.r.Buffered()) >= h.Length && h.Length+ws.MaxHeaderSize <= int64(batchSize-int(d.out.n)) {
		if _, err := d.s.Forward(&d.out, &d.r, h); err != nil {
			return err
		}
		d.out.add(h)
		if hook := d.pr.p.hooks.afterBatch; hook != nil {
			hook(d)
		}
		if d.r.HeaderReady() {
			return nil
		}
		return d.flush()
	}
	if err := d.flush(); err != nil {
		return err
	}
	if _, err := d.s.Forward((*sink)(d), &d.r, h); err != nil {
		return d.writeFailed(err)
	}
	d.count(frames.StartsMessage(h), h)
	return nil
}

// forwardScanned relays the frame h of a client message whose class its
// first bytes could not settle (connRules.scan): its payload goes upstream
// as it is read, through the scan, in frames of up to a chunk, and the
// chunk that settles the class (at the latest, the message's last) goes
// only once that class has been charged (reclassed). Every frame written
// is whole, so a refusal leaves the upstream able to take the close.
func (d *direction) forwardScanned(h ws.Header) error {
	if err := d.flush(); err != nil {
		return err
	}
	cr := d.pr.info.rules
	bp := chunks.Get().(*[]byte)
	defer chunks.Put(bp)
	buf := *bp
	pay := d.s.Payload(&d.r, h)
	out := ws.Header{OpCode: h.OpCode}
	for first := true; ; first = false {
		n, end, err := readChunk(pay, buf)
		if err != nil {
			return err
		}
		end = end || d.s.Unread() == 0
		if cr.scan != nil {
			cr.scan.Write(buf[:n])
			if (cr.scan.Settled() || end && h.Fin) && d.reclassed() {
				return d.skip()
			}
		}
		if n > 0 || first || end && h.Fin {
			out.Fin = end && h.Fin
			if err := d.writeFrame(out, buf[:n]); err != nil {
				return err
			}
			out.OpCode = ws.OpContinuation
		}
		if end {
			d.count(frames.StartsMessage(h), h)
			return nil
		}
	}
}

// writeFailed marks the destination broken when err cut a frame short or
// came from the destination, and returns err.
func (d *direction) writeFailed(err error) error {
	var we *frames.WriteError
	if d.s.MidFrame() || errors.As(err, &we) {
		d.broke()
	}
	return err
}

// flush writes the batched frames with one write.
func (d *direction) flush() error {
	if d.out.n == 0 {
		return nil
	}
	defer d.out.release()
	if d.dst().closeSent || d.dst().broken {
		return nil
	}
	if _, err := (*sink)(d).Write(d.out.bytes()); err != nil {
		d.broke()
		return &frames.WriteError{Err: err}
	}
	d.messages += int64(d.out.msgs)
	d.bytes += d.out.size
	d.pr.p.countRelayed(d.client, int64(d.out.msgs), d.out.size)
	return nil
}

// count records a frame written to dst.
func (d *direction) count(starts bool, h ws.Header) {
	var msgs int64
	if starts {
		msgs = 1
	}
	if h.OpCode.IsControl() {
		h.Length = 0
	}
	d.messages += msgs
	d.bytes += h.Length
	d.pr.p.countRelayed(d.client, msgs, h.Length)
}

// maxDrain bounds what the gate reads and drops from a source once the
// pair ends, while it waits for that source's close frame.
const maxDrain = 1 << 20

// discard reads and drops the next frame of a source whose frames go
// nowhere any more, up to its close frame. Reading a peer's last frames
// before closing keeps the kernel from answering them with a reset that
// could destroy the close frame the gate sent.
func (d *direction) discard() error {
	var hdr [ws.MaxHeaderSize]byte
	h, err := ws.ReadHeaderBuffer(&d.r, hdr[:])
	if err != nil {
		return err
	}
	if h.Length > maxDrain-int64(d.discarded) {
		// A peer that keeps sending after the pair ended is not read further.
		d.srcDone = true
		return nil
	}
	d.discarded += int32(h.Length)
	if _, err := io.CopyN(io.Discard, &d.r, h.Length); err != nil {
		return err
	}
	d.r.Release()
	if h.OpCode == ws.OpClose {
		d.closeRead()
	}
	return nil
}

// skip drops the rest of the frame whose header was the last one read
// (refused, or found in violation), so that the next header can be read;
// a frame too long to skip ends the reading of the source.
func (d *direction) skip() error {
	n := d.s.Unread()
	if n < 0 || n > maxDrain-int64(d.discarded) {
		d.srcDone = true
		return nil
	}
	d.discarded += int32(n)
	return d.s.Skip(&d.r)
}

// drop skips the frame h of a message a rule dropped, under the message
// timeout like a relayed one. Unlike skip it reads on without a budget: the
// pair is open and the message is bounded by MaxMessageBytes.
func (d *direction) drop(h ws.Header) error {
	d.dropping = !h.Fin
	if err := d.s.Skip(&d.r); err != nil {
		return err
	}
	if h.Fin {
		d.messageDone()
	}
	return nil
}

// stop handles the error that stopped d: reading its source, or writing to
// its destination. It begins the pair's ending the error stands for; the
// next look acts on it.
func (d *direction) stop(err error) {
	pr := d.pr
	if errors.Is(err, errAborted) || pr.life.load() == phaseAborted {
		d.srcDone = true
		return
	}
	e, readOn := d.classify(err)
	pr.end(&e)
	if !readOn {
		d.srcDone = true
		return
	}
	if d.s.Unread() != 0 && !d.srcDone {
		// The frame being read was cut short (a violation found in its
		// header or payload, a write that failed): skip the rest of its
		// payload, which is no header, and read on up to the peer's close
		// frame.
		if d.skip() != nil {
			d.srcDone = true
		}
	}
}

// classify maps the error that stopped d to how the pair ends, and says
// whether d's source can still be read (to find its close frame).
func (d *direction) classify(err error) (e ending, readOn bool) {
	var ce *frames.CloseError
	var we *frames.WriteError
	switch {
	case d.client && errors.As(err, &we):
		return upstreamGoneEnding, true
	case d.client && errors.As(err, &ce):
		e = ending{initiator: byGate, clientCode: ce.Code, clientReason: ce.Reason,
			upCode: ws.StatusGoingAway, upReason: "client error"}
		// A message over the size limit is refused like one over a rate
		// limit: the replies already owed still reach the client.
		e.afterUpstream = ce == frames.ErrMessageTooBig
		return e, true
	case d.client && isTimeout(err) && d.msgDeadline.Load() != 0:
		return messageTimeoutEnding, false
	case d.client:
		return clientGoneEnding, false
	case errors.As(err, &we) && isTimeout(we.Err):
		// WriteTimeout: the client stopped reading.
		return clientSlowEnding, true
	case errors.As(err, &we):
		return clientGoneEnding, true
	case errors.As(err, &ce):
		// The upstream hears what it broke: 1002, 1007 for UTF-8, 1009
		// for a message over the size limit.
		return ending{initiator: byUpstream, clientCode: frames.StatusBadGateway, clientReason: "upstream protocol error",
			upCode: ce.Code, upReason: ce.Reason}, false
	default:
		return upstreamGoneEnding, false
	}
}

// finish ends d, and the last direction to finish releases the pair. d's
// registration stays until then: the other direction may still wait to
// write to d's source, and nothing runs d again, since only d parks it.
func (d *direction) finish() {
	_ = d.flush()
	d.r.ResetSocket(nil, -1)
	d.out.release()
	d.msgDeadline.Store(0)
	if d.pr.live.Add(-1) == 0 {
		d.pr.finish()
	}
}
