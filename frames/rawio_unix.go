//go:build unix

package frames

import (
	"io"
	"os"
	"syscall"
	"unsafe"
)

// rawIO says whether sockets are read and written directly here.
const rawIO = true

// readReady is ReadReady for a socket: one read(2) on its descriptor, not
// through the runtime's poller (its lock and state reset cost more than
// the call itself on a busy relay), into the free part of the pooled
// buffer, which compact puts after the buffered bytes. ResetSocket's
// caller keeps the descriptor open while r may read it.
func (r *Reader) readReady() error {
	r.compact()
	buf := *r.big
	m := len(r.data)
	n, err := ReadSocket(r.fd, buf[m:])
	if err != nil {
		r.Release()
		return err
	}
	r.data = buf[:m+n]
	r.short = n < len(buf)-m
	r.got.Add(int64(n))
	return nil
}

// readNonblock reads a non-blocking descriptor without telling the
// scheduler about a system call: the call returns at once (EAGAIN when
// nothing is there), so there is no thread to hand the processor over from,
// and entering a scheduled system call would also wake the runtime's
// monitor thread each time the gate had been idle.
func readNonblock(fd uintptr, p []byte) (int, error) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// WriteReady writes as much of p to the socket fd as its buffer takes now,
// without waiting and without telling the scheduler about a system call
// (see readNonblock), and returns how much that was: less than len(p) with
// a nil error means the buffer is full, and the caller waits (with a
// blocking write) for the rest. The caller keeps fd open during the call.
func WriteReady(fd int, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		rest := p[n:]
		k, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(rest))), uintptr(len(rest)))
		switch e {
		case 0:
			n += int(k)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return n, nil
		default:
			return n, os.NewSyscallError("write", e)
		}
	}
	return n, nil
}

// ReadSocket reads what the socket fd has ready into p, without waiting and
// without telling the scheduler about a system call (see readNonblock). It
// returns ErrWouldBlock when nothing is there and io.EOF when the peer
// closed. The caller keeps fd open during the call.
func ReadSocket(fd int, p []byte) (int, error) {
	for {
		n, err := readNonblock(uintptr(fd), p)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return 0, ErrWouldBlock
		case err != nil:
			return 0, os.NewSyscallError("read", err)
		case n == 0 && len(p) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}
