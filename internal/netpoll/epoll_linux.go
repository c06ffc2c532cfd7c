package netpoll

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
)

// impl is the epoll event loop. Registrations are one-shot
// (EPOLLONESHOT): an armed socket reports one event and is then disabled
// until its owner waits again, so a running owner gets no events.
type impl struct {
	epfd   int
	stopFd [2]int // a pipe whose read end in the set stops the loop (id 0)
	done   chan struct{}

	regMu  sync.Mutex
	descs  map[uint64]*Desc // by id: an event of a removed Desc finds nothing
	nextID uint64
}

func (p *Poller) start() error {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("netpoll: epoll_create1: %w", err)
	}
	p.epfd = epfd
	if err := syscall.Pipe2(p.stopFd[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return fmt.Errorf("netpoll: pipe2: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p.stopFd[0], &ev); err != nil {
		p.closeFds()
		return fmt.Errorf("netpoll: epoll_ctl: %w", err)
	}
	p.descs = make(map[uint64]*Desc)
	p.done = make(chan struct{})
	go p.loop()
	return nil
}

func (p *Poller) closeFds() {
	syscall.Close(p.epfd)
	syscall.Close(p.stopFd[0])
	syscall.Close(p.stopFd[1])
}

// stop ends the loop and waits for it.
func (p *Poller) stop() error {
	if _, err := syscall.Write(p.stopFd[1], []byte{0}); err != nil {
		return fmt.Errorf("netpoll: stop: %w", err)
	}
	<-p.done
	p.closeFds()
	return nil
}

// arm registers d's socket for one readiness event.
func (p *Poller) arm(d *Desc) error {
	op := syscall.EPOLL_CTL_MOD
	added := d.id != 0
	if !added {
		p.regMu.Lock()
		p.nextID++
		d.id = p.nextID
		p.descs[d.id] = d
		p.regMu.Unlock()
		op = syscall.EPOLL_CTL_ADD
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
	putID(&ev, d.id)
	if err := syscall.EpollCtl(p.epfd, op, int(d.fd), &ev); err != nil {
		if !added {
			p.regMu.Lock()
			delete(p.descs, d.id)
			p.regMu.Unlock()
			d.id = 0
		}
		return fmt.Errorf("netpoll: epoll_ctl: %w", err)
	}
	return nil
}

// forget takes d's socket out of the set, before the socket can be closed
// (so that a reused descriptor number never reaches d).
func (p *Poller) forget(d *Desc) {
	p.regMu.Lock()
	delete(p.descs, d.id)
	p.regMu.Unlock()
	_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, int(d.fd), nil)
}

// loop turns readiness events into wakes.
func (p *Poller) loop() {
	defer close(p.done)
	events := make([]syscall.EpollEvent, 256)
	ready := make([]*Desc, 0, len(events))
	for {
		n, err := syscall.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			return
		}
		ready = ready[:0]
		p.regMu.Lock()
		for i := range events[:n] {
			id := getID(&events[i])
			if id == 0 {
				p.regMu.Unlock()
				return
			}
			if d := p.descs[id]; d != nil {
				ready = append(ready, d)
			}
		}
		p.regMu.Unlock()
		for i, d := range ready {
			p.Wake(d)
			ready[i] = nil
		}
	}
}

// putID and getID keep a 64-bit id in the event's data (Fd and Pad).
func putID(ev *syscall.EpollEvent, id uint64) {
	ev.Fd = int32(id)
	ev.Pad = int32(id >> 32)
}

func getID(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
