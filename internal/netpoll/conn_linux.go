package netpoll

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/holo/wsgate/frames"
)

// Conn is a TCP connection the gate dialed on a socket of its own,
// registered in a Poller from its connect on: its reads and writes wait in
// Block, never in the runtime's poller. A socket dialed by net.Dialer
// costs a handshake six system calls that this one does not make (the
// runtime's registration and its removal, getsockname and getpeername,
// then Own's duplicate and the close of the original) and net.Dialer's
// own work; at the upgrade rates of a busy gate the dial was a sixth of
// its CPU. Once the upstream's handshake is over, the relay takes the
// socket and its registration with Handover.
//
// A Conn is read by one goroutine and written by one at a time, as the
// relay's sockets are. The deadline setters may be called from any
// goroutine, and reach a Read or Write that waits. Close must not run
// alongside a Read or Write (unlike a net.Conn, nothing holds the
// descriptor open for them): the gate closes a Conn on the goroutine that
// uses it. After Close (or Release, or Handover) they answer
// net.ErrClosed and leave the descriptor, whose number may be another
// socket's by then, alone.
type Conn struct {
	p      *Poller
	d      Desc
	remote netip.AddrPort
	// Deadlines in unix nanoseconds; 0 for none.
	rdl, wdl atomic.Int64
	// waiting counts Reads and Writes between reading their deadline and
	// the end of their wait: a deadline set meanwhile wakes them (and only
	// then, so that a Conn whose deadline changed while nothing waited
	// hands no stray wake to the relay).
	waiting atomic.Int32
	closed  atomic.Bool
}

// DialTCP connects a socket to addr, waiting in p until it is connected,
// ctx is done or its deadline passes. keepAlive > 0 turns TCP keepalive
// on with that idle time and interval.
func (p *Poller) DialTCP(ctx context.Context, addr netip.AddrPort, keepAlive time.Duration) (*Conn, error) {
	ip := addr.Addr().Unmap()
	if ip.Zone() != "" {
		return nil, errors.New("netpoll: dial: addresses with a zone are not supported")
	}
	family := syscall.AF_INET
	if !ip.Is4() {
		family = syscall.AF_INET6
	}
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, dialError(addr, os.NewSyscallError("socket", err))
	}
	c := &Conn{p: p, remote: netip.AddrPortFrom(ip, addr.Port())}
	c.d.Init(fd, nil) // never parked with Wait: its callback never runs
	err = c.setup(keepAlive)
	if err == nil {
		err = c.connect(ctx)
	}
	if err != nil {
		c.Close() // registered or not
		return nil, dialError(addr, err)
	}
	return c, nil
}

// Release gives the socket back to the runtime: it leaves p's set and
// returns as a net.Conn of the runtime's (a duplicate descriptor; c's is
// closed), for code that needs one (net/http). Nothing may wait on c
// meanwhile, and c must not be used after.
func (c *Conn) Release() (net.Conn, error) {
	if !c.closed.CompareAndSwap(false, true) {
		return nil, net.ErrClosed
	}
	fd := int(c.d.fd)
	p := c.p
	p.regMu.Lock()
	if c.d.id != 0 && !p.stopped {
		// Out of the set before the duplicate: Linux keeps a socket in an
		// epoll set while any descriptor of it is open, and its events
		// would wake the lead for nothing.
		_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, fd, nil)
	}
	p.regMu.Unlock()
	p.Remove(&c.d)
	f := os.NewFile(uintptr(fd), "")
	nc, err := net.FileConn(f)
	_ = f.Close()
	return nc, err
}

// CloseWrite shuts the sending half down: the peer reads EOF after what
// was written.
func (c *Conn) CloseWrite() error {
	if c.closed.Load() {
		return c.opError("close", net.ErrClosed)
	}
	return os.NewSyscallError("shutdown", sysShutdown(int(c.d.fd), syscall.SHUT_WR))
}

// setup sets the socket options net.Dialer sets: no Nagle delay, and
// keepalive when asked.
func (c *Conn) setup(keepAlive time.Duration) error {
	fd := int(c.d.fd)
	if err := sysSetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1); err != nil {
		return os.NewSyscallError("setsockopt", err)
	}
	if keepAlive <= 0 {
		return nil
	}
	secs := max(int((keepAlive+time.Second-1)/time.Second), 1)
	for _, o := range [...]struct{ level, opt, v int }{
		{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, secs},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, secs},
	} {
		if err := sysSetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return os.NewSyscallError("setsockopt", err)
		}
	}
	return nil
}

// connect connects the socket and registers it in the Poller, waiting
// for it to become writable (the outcome is then its SO_ERROR) until ctx
// is done or its deadline passes. The socket is registered once connect(2)
// has started: before, an unconnected socket reports itself writable (and
// hung up), and that event, taken for the connection's, read as connected
// a socket still waiting for the peer's answer. Registered after, it has
// no event until the connection is made or fails, and one at once (the
// registration looks at its state) if that happened in between.
func (c *Conn) connect(ctx context.Context) error {
	fd := int(c.d.fd)
	var deadline int64
	if t, ok := ctx.Deadline(); ok {
		deadline = t.UnixNano()
	}
	started := sysConnect(fd, c.remote)
	switch started {
	case nil, syscall.EINPROGRESS, syscall.EINTR:
	default:
		return os.NewSyscallError("connect", started)
	}
	if err := c.p.Register(&c.d); err != nil {
		return err
	}
	if started == nil {
		return nil // connected already
	}
	// A context ended early (the client went away) wakes the wait.
	defer context.AfterFunc(ctx, func() { writable(&c.d) })()
	for {
		if err := c.p.Block(&c.d, true, deadline); err != nil {
			return err // os.ErrDeadlineExceeded: a timeout
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := sysGetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
		if err != nil {
			return os.NewSyscallError("getsockopt", err)
		}
		switch e := syscall.Errno(n); e {
		case 0:
			return nil
		case syscall.EINPROGRESS, syscall.EALREADY, syscall.EINTR:
		default:
			return os.NewSyscallError("connect", e)
		}
	}
}

func dialError(addr netip.AddrPort, err error) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: err}
}

// Read reads what the socket holds, waiting in the Poller while it holds
// nothing, until the read deadline.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		if c.closed.Load() {
			// Its descriptor's number may be another socket's now.
			return 0, c.opError("read", net.ErrClosed)
		}
		n, err := frames.ReadSocket(int(c.d.fd), b)
		switch {
		case err == io.EOF:
			return 0, err
		case err == frames.ErrWouldBlock:
			if err := c.wait(false); err != nil {
				return 0, err
			}
		case err != nil:
			return 0, c.opError("read", err)
		default:
			return n, nil
		}
	}
}

// Write writes all of b, waiting in the Poller while the socket's buffer is
// full, until the write deadline.
func (c *Conn) Write(b []byte) (int, error) {
	done := 0
	for {
		if c.closed.Load() {
			return done, c.opError("write", net.ErrClosed)
		}
		n, err := frames.WriteReady(int(c.d.fd), b[done:])
		done += n
		if err != nil {
			return done, c.opError("write", err)
		}
		if done == len(b) {
			return done, nil
		}
		if err := c.wait(true); err != nil { // the buffer is full
			return done, err
		}
	}
}

// wait blocks until the socket may be ready to read (or write), a deadline
// change or Close.
func (c *Conn) wait(write bool) error {
	dl := &c.rdl
	if write {
		dl = &c.wdl
	}
	c.waiting.Add(1)
	var err error
	if !c.closed.Load() {
		err = c.p.Block(&c.d, write, dl.Load())
	}
	c.waiting.Add(-1)
	if c.closed.Load() {
		return c.opError(op(write), net.ErrClosed)
	}
	if err != nil {
		return c.opError(op(write), err)
	}
	return nil
}

// kick wakes a Read or Write that waits, if any may: one that reads
// its deadline or checks closed afterwards needs no wake (waiting and the
// value are both sequentially consistent: one of the two sees the other).
func (c *Conn) kick() {
	if c.waiting.Load() > 0 {
		c.p.Wake(&c.d)
	}
}

func op(write bool) string {
	if write {
		return "write"
	}
	return "read"
}

func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Addr: c.RemoteAddr(), Err: err}
}

// Close removes the socket from the Poller and closes it, unless Handover
// gave it away.
func (c *Conn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	c.kick()
	c.p.Remove(&c.d)
	return os.NewSyscallError("close", sysClose(int(c.d.fd)))
}

// Handover gives the socket and its registration to d, which must have
// been Init'ed with the socket's descriptor (FD) and not registered: d's
// owner reads it, waits for it and removes it as if it had registered it
// itself, and closes the descriptor after Remove. A readiness that came
// for the Conn and was not taken yet is d's. c must not be used after.
func (c *Conn) Handover(d *Desc) {
	c.closed.Store(true)
	p := c.p
	p.regMu.Lock()
	d.id = c.d.id
	p.byFD[d.fd] = d
	p.regMu.Unlock()
	// Events go to d from here on; those that came before are c's.
	if c.d.state.Load() == kicked {
		d.state.CompareAndSwap(running, kicked)
	}
	if c.d.wr.Load() == pendingWrite {
		d.wr.CompareAndSwap(nil, pendingWrite)
	}
	c.d.id = 0
	c.d.state.Store(removed)
}

// FD is the socket's descriptor.
func (c *Conn) FD() int { return int(c.d.fd) }

// LocalAddr asks the socket for its address.
func (c *Conn) LocalAddr() net.Addr {
	sa, err := syscall.Getsockname(int(c.d.fd))
	if err != nil {
		return nil
	}
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return &net.TCPAddr{IP: sa.Addr[:], Port: sa.Port}
	case *syscall.SockaddrInet6:
		return &net.TCPAddr{IP: sa.Addr[:], Port: sa.Port}
	}
	return nil
}

// RemoteAddr is the address dialed.
func (c *Conn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }

// SetDeadline sets both deadlines; a Read or Write waiting meanwhile looks
// at them again.
func (c *Conn) SetDeadline(t time.Time) error {
	v := unixNano(t)
	c.rdl.Store(v)
	c.wdl.Store(v)
	c.kick()
	return nil
}

// SetReadDeadline sets the read deadline, as SetDeadline.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.rdl.Store(unixNano(t))
	c.kick()
	return nil
}

// SetWriteDeadline sets the write deadline, as SetDeadline.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.wdl.Store(unixNano(t))
	c.kick()
	return nil
}

// unixNano is t as a deadline: 0 for none, and at least 1 for a time in
// the past (Block treats 0 as none).
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return max(t.UnixNano(), 1)
}
