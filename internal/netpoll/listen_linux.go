package netpoll

import (
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// Listener accepts TCP connections as Conns of its Poller: an accepted
// socket is registered there from the start, so it makes none of the
// system calls of one taken through net.Listener and then Own (the
// runtime's registration and its removal, getsockname, the duplicate and
// the close of the original): five per connection, a tenth of a WebSocket
// handshake's.
//
// One goroutine calls Accept; Close may be called from any. Only the
// accepting goroutine closes the descriptor (a Close from elsewhere wakes
// it), so accept(2) never runs on a number that was closed and reused.
type Listener struct {
	p         *Poller
	d         Desc
	addr      net.Addr
	keepAlive time.Duration
	closed    atomic.Bool
	released  bool // the descriptor is closed; the accepting goroutine's
}

// Listen takes ln's listening socket into p and closes ln: the socket goes
// on listening on a duplicate of its descriptor, which the Listener owns.
// Accepted connections get TCP_NODELAY, and TCP keepalive with keepAlive
// as its idle time and interval when it is positive.
func (p *Poller) Listen(ln *net.TCPListener, keepAlive time.Duration) (*Listener, error) {
	fd, err := dup(ln)
	if err != nil {
		return nil, err
	}
	l := &Listener{p: p, addr: ln.Addr(), keepAlive: keepAlive}
	l.d.Init(fd, nil) // never parked with Wait: its callback never runs
	if err := p.Register(&l.d); err != nil {
		_ = syscall.Close(fd)
		return nil, err
	}
	_ = ln.Close()
	return l, nil
}

// Accept waits for the next connection and returns it. A connection that
// fails on its way in (reset before it was taken, its options refused) is
// skipped. After Close, or the Poller's, it returns net.ErrClosed;
// otherwise an error is accept's own (EMFILE: out of descriptors), which
// the caller backs off from.
func (l *Listener) Accept() (*Conn, error) {
	for {
		if l.closed.Load() || l.released {
			l.release()
			return nil, net.ErrClosed
		}
		fd, remote, err := sysAccept(int(l.d.fd))
		switch err {
		case nil:
		case syscall.EINTR, syscall.ECONNABORTED:
			continue
		case syscall.EAGAIN:
			if err := l.p.Block(&l.d, false, 0); err == ErrClosed {
				l.release()
				return nil, net.ErrClosed
			}
			continue
		default:
			return nil, os.NewSyscallError("accept4", err)
		}
		c := &Conn{p: l.p, remote: remote}
		c.d.Init(fd, nil)
		err = c.setup(l.keepAlive)
		if err == nil {
			err = l.p.Register(&c.d)
		}
		if err == nil {
			return c, nil
		}
		c.Close()
	}
}

// release closes the descriptor, once; the accepting goroutine's.
func (l *Listener) release() {
	if !l.released {
		l.released = true
		l.p.Remove(&l.d)
		_ = sysClose(int(l.d.fd))
	}
}

// Close stops the listener: an Accept waiting returns net.ErrClosed and
// closes the socket, as does the next Accept when none waits.
func (l *Listener) Close() error {
	if l.closed.CompareAndSwap(false, true) {
		l.p.Wake(&l.d)
	}
	return nil
}

// Addr is the listening address.
func (l *Listener) Addr() net.Addr { return l.addr }
