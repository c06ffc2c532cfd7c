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
// the call itself on a busy relay). ResetSocket's caller keeps the
// descriptor open while r may read it.
func (r *Reader) readReady() error {
	r.compact()
	r.rawRes = 0
	r.readFd(uintptr(r.fd))
	var err error
	switch r.rawRes {
	case 0:
		return nil
	case rawAgain:
		err = ErrWouldBlock
	case rawEOF:
		err = io.EOF
	default:
		err = os.NewSyscallError("read", syscall.Errno(r.rawRes))
	}
	r.Release()
	return err
}

// Results of readFd besides bytes read and errno values.
const (
	rawAgain = -1
	rawEOF   = -2
)

// readFd reads once into the free part of the pooled buffer, which compact
// put after the buffered bytes. It never asks the runtime to wait.
func (r *Reader) readFd(fd uintptr) bool {
	buf := *r.big
	m := len(r.data)
	for {
		n, err := readNonblock(fd, buf[m:])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			r.rawRes = rawAgain
		case err != nil:
			r.rawRes = int32(err.(syscall.Errno))
		case n == 0:
			r.rawRes = rawEOF
		default:
			r.data = buf[:m+n]
			r.short = n < len(buf)-m
			r.got.Add(int64(n))
		}
		return true
	}
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
