package limit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// Event types. Hold, Reset, Revoke and Unrevoke publish theirs; Publish
// carries the others (EventDisconnect, and any type the caller defines).
const (
	// EventDisconnect asks every replica to close the connections of
	// Scope and ID (a KeyRef).
	EventDisconnect = "disconnect"
	// EventHold: Scope and ID are held until Until (Hold).
	EventHold = "hold"
	// EventReset: the state and hold of Scope and ID were dropped (Reset).
	EventReset = "reset"
	// EventRevoke: Subject or TokenID is revoked until Until (Revoke).
	EventRevoke = "revoke"
	// EventUnrevoke: the revocation of Subject or TokenID was lifted
	// (Unrevoke).
	EventUnrevoke = "unrevoke"
)

const (
	// reloadEvery is how often a replica re-reads the holds and
	// revocations from Redis.
	reloadEvery = time.Second
	// subscribeBackoff and subscribeBackoffMax bound the wait before a
	// lost subscription is tried again.
	subscribeBackoff    = 100 * time.Millisecond
	subscribeBackoffMax = 5 * time.Second
)

// Event is a message between the replicas of a gate, sent by Publish and by
// the admin calls, and handed to each replica's OnEvent handler.
//
// # Storage and sync
//
// Holds and revocations live in two Redis hashes, field to a JSON value
// {"untilMs": <end, Unix ms>, "reason": "..."}:
//
//	<prefix>:admin:holds     field "<scope>|<id>" (a '|' or '%' of the scope escaped as %7C, %25)
//	<prefix>:admin:revoked   field "sub|<subject>" or "jti|<token id>"
//
// and events go as JSON over the Pub/Sub channel "<prefix>:admin:events".
// Every replica keeps a local copy of both hashes, which its decisions and
// Revoked read without I/O; it is updated by this replica's own calls, by
// the events of the others, and by a re-read of both hashes every second
// (and when the subscription is made again). A record whose end has
// passed is ignored and deleted from its hash by the next re-read. On the
// memory store the local copy is all there is.
//
// # Guarantees and order
//
//   - An admin call writes Redis first, then its local copy, then
//     publishes its event: when Hold or Revoke returns, this replica
//     enforces the record, and it is in Redis.
//   - Each replica receives the events through one subscription and
//     applies them to its copy as they arrive, before handing them to its
//     handler: a handler that is told of a hold or a revocation finds it
//     in force. Events arrive everywhere in the order Redis received them:
//     a call published after another returned comes after it.
//   - Events are not stored: one published while a replica's subscription
//     is down never reaches it. The re-read makes up for the records
//     within about a second: the copy becomes what the hashes hold, and
//     each hold or revocation found that the copy lacked is handed to the
//     handler as a synthesized EventHold or EventRevoke (Origin ""), so
//     that connections of a token revoked meanwhile are still closed. An
//     EventDisconnect or EventReset that was missed is lost (the reset's
//     counters are gone from Redis all the same).
//   - A re-read whose reply is older than an event received meanwhile does
//     not undo that event; after the last change, every replica's copy
//     equals the hashes within about a second.
//   - While Redis is unreachable, the copy keeps the records it knows
//     until they end, and the admin calls fail (the event of a Publish
//     still reaches this replica's handler).
//   - The handler is called from one goroutine, in order, never
//     concurrently; a publisher's own events are handed to it directly,
//     not through Redis. Events before OnEvent, or after Close, are
//     dropped.
type Event struct {
	Type string `json:"type"`
	// Scope and ID name a key, as in a KeyRef (EventDisconnect,
	// EventHold, EventReset).
	Scope string `json:"scope,omitempty"`
	ID    string `json:"id,omitempty"`
	// Subject or TokenID names a revocation (EventRevoke, EventUnrevoke).
	Subject string `json:"subject,omitempty"`
	TokenID string `json:"tokenId,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// Until is the end of a hold or a revocation.
	Until time.Time `json:"until,omitzero"`
	// Origin identifies the Limiter that published the event (set by
	// Publish, random per Limiter); "" for one synthesized by a re-read.
	Origin string `json:"origin,omitempty"`
}

// Publish sends e to every replica's OnEvent handler, this one's included
// (see Event): over Redis Pub/Sub, and on the memory store to this
// process's handler alone. It sets e.Origin. The types that record
// something (EventHold, EventReset, EventRevoke, EventUnrevoke) are
// refused: Hold, Reset, Revoke and Unrevoke store the record and publish
// them. An error means other replicas may not have received e.
func (l *Limiter) Publish(ctx context.Context, e Event) error {
	switch e.Type {
	case "":
		return fmt.Errorf("%w: event without a type", ErrBadRequest)
	case EventHold, EventReset, EventRevoke, EventUnrevoke:
		return fmt.Errorf("%w: %s events are published by the call that makes them", ErrBadRequest, e.Type)
	}
	if err := l.announce(ctx, e); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	return nil
}

// announce hands e to this replica's handler and publishes it to the
// others.
func (l *Limiter) announce(ctx context.Context, e Event) error {
	e.Origin = l.origin
	l.events.deliver(e)
	if !l.useRedis {
		return nil
	}
	rs, err := l.redis()
	if err != nil {
		return err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	ctx, cancel := l.adminContext(ctx)
	defer cancel()
	return rs.client.Do(ctx, rs.client.B().Publish().Channel(l.channel).Message(string(b)).Build()).Error()
}

// announceChange announces the event of a record stored: when publishing
// fails, the other replicas find the record by their re-read.
func (l *Limiter) announceChange(ctx context.Context, e Event) {
	if err := l.announce(ctx, e); err != nil {
		l.log.Warn("admin event not published; other replicas find the change within a second",
			"type", e.Type, "err", err)
	}
}

// OnEvent sets the handler of the events that reach this replica (see
// Event). Set it before events flow: before the gate serves, and before
// Hold, Revoke or Publish. Setting it again replaces it. It is called
// from one goroutine, in order, and must not block for long: events wait
// for it in memory.
func (l *Limiter) OnEvent(f func(Event)) {
	l.events.start(l, f)
}

// eventQueue hands events to the handler from one goroutine
// (deliverEvents), which it starts with the first handler: a Limiter
// without a handler runs no goroutine for it. Events wait in q, unbounded,
// so that receiving never blocks on the handler (the subscription's
// connection carries decisions too).
type eventQueue struct {
	mu      sync.Mutex
	q       []Event
	handler func(Event)
	started bool
	closed  bool // set by Close before it waits for the goroutines
	wake    chan struct{}
}

func (eq *eventQueue) start(l *Limiter, f func(Event)) {
	eq.mu.Lock()
	defer eq.mu.Unlock()
	if eq.closed {
		return
	}
	eq.handler = f
	if !eq.started && f != nil {
		eq.started = true
		eq.wake = make(chan struct{}, 1)
		l.wg.Add(1)
		go l.deliverEvents()
	}
}

// close stops new handlers from starting the goroutine; Close calls it
// before it waits.
func (eq *eventQueue) close() {
	eq.mu.Lock()
	eq.closed = true
	eq.mu.Unlock()
}

// deliver queues e for the handler; without a handler, it drops e.
func (eq *eventQueue) deliver(e Event) {
	eq.mu.Lock()
	if eq.handler == nil || eq.closed {
		eq.mu.Unlock()
		return
	}
	eq.q = append(eq.q, e)
	wake := eq.wake
	eq.mu.Unlock()
	select {
	case wake <- struct{}{}:
	default: // a wake is pending
	}
}

// deliverEvents calls the handler with each queued event, in order, until
// Close.
func (l *Limiter) deliverEvents() {
	defer l.wg.Done()
	eq := &l.events
	for {
		select {
		case <-l.stop:
			return
		case <-eq.wake:
		}
		for {
			eq.mu.Lock()
			batch, h := eq.q, eq.handler
			eq.q = nil
			eq.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			for _, e := range batch {
				select {
				case <-l.stop:
					return
				default:
				}
				if h != nil { // OnEvent(nil) removed it
					h(e)
				}
			}
		}
	}
}

// receiveEvent applies an event from the subscription to the local copy
// and queues it for the handler. It runs on the subscription's goroutine
// and must not block: rueidis's reader waits for it when its buffer of 16
// messages is full, and that connection carries decisions too.
func (l *Limiter) receiveEvent(m rueidis.PubSubMessage) {
	var e Event
	if err := json.Unmarshal([]byte(m.Message), &e); err != nil {
		l.log.Debug("admin event unreadable, ignored", "err", err)
		return
	}
	if e.Origin == l.origin {
		return // applied and delivered when published
	}
	now := l.now()
	switch e.Type {
	case EventHold, EventReset:
		k, err := KeyRef{Scope: e.Scope, ID: e.ID}.parse()
		if err != nil {
			l.log.Debug("admin event with a bad key, not applied", "type", e.Type, "err", err)
			break
		}
		if e.Type == EventHold {
			l.holds.set(k, record{until: e.Until, reason: e.Reason}, false, now)
			break
		}
		l.holds.set(k, record{}, true, now)
		l.mem.resetKey(k)
		if l.lease != nil {
			l.lease.drop(k)
		}
	case EventRevoke, EventUnrevoke:
		k, err := revKeyOf(e.Subject, e.TokenID)
		if err != nil {
			l.log.Debug("admin event with a bad revocation, not applied", "type", e.Type, "err", err)
			break
		}
		l.revoked.set(k, record{until: e.Until, reason: e.Reason}, e.Type == EventUnrevoke, now)
	}
	l.events.deliver(e)
}

// subscribeEvents keeps the subscription to the events channel open until
// Close, subscribing again after a backoff when it is lost.
func (l *Limiter) subscribeEvents() {
	defer l.wg.Done()
	backoff := subscribeBackoff
	for {
		rs := l.rs.Load()
		if rs != nil {
			var confirmed atomic.Bool
			ctx := rueidis.WithOnSubscriptionHook(l.bg, func(s rueidis.PubSubSubscription) {
				if s.Kind == "subscribe" {
					// On rueidis's reader goroutine: no blocking here.
					confirmed.Store(true)
					l.subscribed.Store(true)
					l.kickReload()
				}
			})
			err := rs.client.Receive(ctx, rs.client.B().Subscribe().Channel(l.channel).Build(), l.receiveEvent)
			l.subscribed.Store(false)
			if l.bg.Err() != nil {
				return
			}
			if confirmed.Load() {
				backoff = subscribeBackoff
				l.log.Warn("admin events subscription lost, subscribing again", "err", err)
			} else {
				l.log.Debug("admin events subscription failed", "err", err)
			}
		}
		wait := backoff
		if rs == nil {
			wait = probeEvery // until watchRedis connects
		} else {
			backoff = min(2*backoff, subscribeBackoffMax)
		}
		select {
		case <-l.stop:
			return
		case <-time.After(wait):
		}
	}
}

// kickReload asks reloadRecords for a re-read now.
func (l *Limiter) kickReload() {
	select {
	case l.reloadNow <- struct{}{}:
	default:
	}
}

// reloadRecords re-reads the holds and revocations every reloadEvery, and
// when kicked, until Close. Like the other background work, its failures
// never change a node's health.
func (l *Limiter) reloadRecords() {
	defer l.wg.Done()
	t := time.NewTicker(reloadEvery)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		case <-l.reloadNow:
		}
		if err := l.reload(); err != nil && l.bg.Err() == nil {
			l.log.Debug("admin records not re-read", "err", err)
		}
	}
}

// reload re-reads both hashes in one round trip, makes the local copy what
// they hold (see records), hands the handler an event per record added,
// and deletes the records that ended from the hashes.
func (l *Limiter) reload() error {
	rs, err := l.redis()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(l.bg, max(l.timeout, time.Second))
	defer cancel()
	c := rs.client
	hGen, rGen := l.holds.reading(), l.revoked.reading()
	res := c.DoMulti(ctx, l.holds.read(c), l.revoked.read(c))
	now := l.now()
	holds, hEnded, err := l.holds.decode(res[0], now)
	if err != nil {
		return err
	}
	revs, rEnded, err := l.revoked.decode(res[1], now)
	if err != nil {
		return err
	}
	for k, e := range l.holds.replace(holds, hGen, now) {
		l.events.deliver(Event{Type: EventHold, Scope: k.key.String(), ID: k.id, Reason: e.reason, Until: e.until})
	}
	for k, e := range l.revoked.replace(revs, rGen, now) {
		l.events.deliver(Event{Type: EventRevoke, Subject: k.subject, TokenID: k.tokenID, Reason: e.reason, Until: e.until})
	}
	var errs [2]error
	if len(hEnded) > 0 {
		errs[0] = l.holds.dropEnded(ctx, c, hEnded)
	}
	if len(rEnded) > 0 {
		errs[1] = l.revoked.dropEnded(ctx, c, rEnded)
	}
	return errors.Join(errs[:]...)
}
