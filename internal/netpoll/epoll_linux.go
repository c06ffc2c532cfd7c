package netpoll

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// impl is the epoll event loop. A socket is registered once (Register, or
// its first Wait), edge-triggered (EPOLLET), for reading and writing: it
// reports an event each time bytes arrive or, after a write found its
// buffer full, room is made, whatever its owner is doing, and parking it
// costs no system call. Readability goes to the owner (Wait, Block) and
// writability to the writer (Block).
// An event for a running Desc only kicks it (its owner's next Wait returns
// at once and the owner reads again), so no edge is lost between the
// owner's last read and its Wait.
//
// The loop does not block in epoll_wait: the epoll descriptor is itself
// readable while events are pending, so the loop waits for it in Go's own
// poller, as a socket read would. A readiness event then wakes the loop
// goroutine the way it wakes any goroutine blocked on a socket, on a
// processor that runs the callback it hands over right after, instead of
// waking a thread parked in a system call and handing over from there.
type impl struct {
	epfd int
	file *os.File        // epfd, for Go's poller; closing it ends the lead
	rc   syscall.RawConn // file's

	// The leading worker's: the batch of events, its size, and take
	// (p.take, made once).
	events []syscall.EpollEvent
	n      int
	takeFn func(uintptr) bool

	regMu sync.Mutex
	// byFD holds the registered Descs by descriptor number (numbers are
	// small and dense). An event carries the number and the Desc's
	// generation, so an event of a removed Desc whose number was reused
	// finds nothing.
	byFD    []*Desc
	nextGen uint32
	stopped bool // the epoll descriptor is closed: nothing registers any more
}

func (p *Poller) start() error {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("netpoll: epoll_create1: %w", err)
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		return fmt.Errorf("netpoll: %w", err)
	}
	p.epfd = epfd
	p.file = os.NewFile(uintptr(epfd), "netpoll")
	if p.rc, err = p.file.SyscallConn(); err != nil {
		p.file.Close()
		return fmt.Errorf("netpoll: %w", err)
	}
	p.events = make([]syscall.EpollEvent, 256)
	p.takeFn = p.take
	return nil
}

// stop ends the lead: the leading worker's wait returns an error. No
// registration is under way then, nor made later: the descriptor's number
// could belong to another file by then.
func (p *Poller) stop() error {
	p.regMu.Lock()
	defer p.regMu.Unlock()
	p.stopped = true
	p.halted.Store(true)
	// Nothing wakes a wait in Block from now on: those under way (a dial's,
	// a handshake's) return, and fail (Block sees halted).
	for _, d := range p.byFD {
		if d != nil {
			unblock(d)
		}
	}
	if err := p.file.Close(); err != nil {
		return fmt.Errorf("netpoll: stop: %w", err)
	}
	return nil
}

// arm registers d's socket at its first Wait; later Waits need nothing.
func (p *Poller) arm(d *Desc) error {
	if d.id != 0 {
		if p.halted.Load() {
			return ErrClosed
		}
		return nil
	}
	p.regMu.Lock()
	defer p.regMu.Unlock()
	if p.stopped {
		return ErrClosed
	}
	p.nextGen++
	if p.nextGen == 0 {
		p.nextGen++ // an id of 0 means "not registered"
	}
	d.id = uint64(p.nextGen)<<32 | uint64(uint32(d.fd))
	for int(d.fd) >= len(p.byFD) {
		p.byFD = append(p.byFD, nil)
	}
	p.byFD[d.fd] = d
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP | edgeTriggered}
	putID(&ev, d.id)
	if err := syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(d.fd), &ev); err != nil {
		p.byFD[d.fd] = nil
		d.id = 0
		return fmt.Errorf("netpoll: epoll_ctl: %w", err)
	}
	return nil
}

// forget makes events of d's socket reach nothing: they carry d's id,
// which no Desc holds any more, and its descriptor number may be reused
// (a new id) once the socket is closed. The socket stays in the set until
// it is closed: Linux drops a socket from every epoll set when its last
// descriptor closes, and an owned socket has one (Own closes the
// runtime's), so an EPOLL_CTL_DEL first would be a system call for
// nothing, two per connection.
func (p *Poller) forget(d *Desc) {
	p.regMu.Lock()
	if p.byFD[d.fd] == d {
		p.byFD[d.fd] = nil
	}
	p.regMu.Unlock()
}

// ready waits for readiness and appends the Descs it claims to batch, in
// the order of their events; a Desc that was running is kicked instead. It
// returns an error once the poller is closed. Only the leading worker calls
// it.
func (p *Poller) ready(batch []*Desc) ([]*Desc, error) {
	if err := p.rc.Read(p.takeFn); err != nil {
		return batch, err
	}
	p.regMu.Lock()
	defer p.regMu.Unlock()
	for i := range p.events[:p.n] {
		id := getID(&p.events[i])
		fd := int(uint32(id))
		if fd >= len(p.byFD) {
			continue
		}
		d := p.byFD[fd]
		if d == nil || d.id != id {
			continue
		}
		ev := p.events[i].Events
		if ev&(syscall.EPOLLOUT|syscall.EPOLLERR|syscall.EPOLLHUP) != 0 {
			writable(d)
		}
		if ev&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLERR|syscall.EPOLLHUP) != 0 && claim(d) {
			batch = append(batch, d)
		}
	}
	return batch, nil
}

// take is ready's attempt to collect events. It must look every time
// before the wait: RawConn.Read forgets a readiness that came while nobody
// waited, and the set only signals again when an event is added to it.
func (p *Poller) take(fd uintptr) bool {
	p.n = epollWaitNow(fd, p.events)
	return p.n > 0
}

// epollWaitNow collects the pending events without waiting. It returns at
// once, so it is made without telling the scheduler about a system call.
func epollWaitNow(epfd uintptr, events []syscall.EpollEvent) int {
	for {
		n, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, epfd,
			uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0
		}
		return int(n)
	}
}

// edgeTriggered is EPOLLET as the unsigned event mask holds it.
const edgeTriggered = 1 << 31

// putID and getID keep a 64-bit id in the event's data (Fd and Pad).
func putID(ev *syscall.EpollEvent, id uint64) {
	ev.Fd = int32(id)
	ev.Pad = int32(id >> 32)
}

func getID(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
