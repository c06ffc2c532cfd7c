package limit

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// record is an operator hold or revocation, in force until until.
type record struct {
	until  time.Time
	reason string
}

// recordValue is a record as its Redis hash holds it.
type recordValue struct {
	UntilMs int64  `json:"untilMs"`
	Reason  string `json:"reason,omitempty"`
}

func (e record) value() string {
	b, _ := json.Marshal(recordValue{UntilMs: e.until.UnixMilli(), Reason: e.reason}) // cannot fail
	return string(b)
}

// recordSet is a snapshot of the records known, never modified once
// published: a decision reads it without a lock.
type recordSet[K comparable] struct {
	m map[K]record
	// first is the earliest end in m: from then on the set holds a record
	// that ended, and the next reader prunes it.
	first time.Time
}

// get returns k's record when it is in force at now.
func (s *recordSet[K]) get(k K, now time.Time) (record, bool) {
	e, ok := s.m[k]
	return e, ok && now.Before(e.until)
}

// records is one kind of operator record, holds or revocations, as this
// Limiter knows them: the local copy that decisions read without I/O. With
// Redis every record lives in one hash (see Event for the layout) and the
// copy follows it; on the memory store the copy is all there is.
//
// cur is nil while no record is known, so that a decision pays one atomic
// load for the whole feature; otherwise it is replaced whole (copy on
// write, the sets are small) by its writers, serialized by mu: this
// Limiter's admin calls, the events of other replicas (receiveEvent), the
// re-read of the hash every second (reloadRecords), and the first reader
// that finds a record ended (prune).
//
// A re-read races the events: the hash may be read before a write whose
// event arrives ahead of the reply. changed[k] is the gen of the last
// change of k by a call or an event, and a re-read begun at gen g replaces
// only the keys that no change touched after g: a stale reply never undoes
// a newer event, and once the changes stop the next re-read makes the copy
// equal to the hash. While a call of this Limiter writes k to Redis,
// changed[k] is pending (begin), so that a re-read that sees the write
// before the call's set does not take k for a record the copy missed.
// changed is nil on the memory store, where nothing re-reads.
type records[K comparable] struct {
	hash  string // the Redis hash
	field func(K) string
	parse func(field string) (K, bool)

	cur atomic.Pointer[recordSet[K]]

	mu      sync.Mutex
	gen     uint64
	changed map[K]uint64
}

// init sets up r; reread says whether a re-read of the hash follows it.
func (r *records[K]) init(hash string, field func(K) string, parse func(string) (K, bool), reread bool) {
	r.hash, r.field, r.parse = hash, field, parse
	if reread {
		r.changed = make(map[K]uint64)
	}
}

// live returns the records in force at now, nil when there are none.
func (r *records[K]) live(now time.Time) *recordSet[K] {
	s := r.cur.Load()
	if s != nil && !now.Before(s.first) {
		s = r.prune(now)
	}
	return s
}

// prune drops the records that ended at now.
func (r *records[K]) prune(now time.Time) *recordSet[K] {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.cur.Load()
	if s == nil || now.Before(s.first) {
		return s // pruned meanwhile
	}
	return r.publish(r.copyLive(now))
}

// copyLive returns a copy of the records in force at now. mu is held.
func (r *records[K]) copyLive(now time.Time) map[K]record {
	s := r.cur.Load()
	if s == nil {
		return make(map[K]record)
	}
	m := make(map[K]record, len(s.m)+1)
	for k, e := range s.m {
		if now.Before(e.until) {
			m[k] = e
		}
	}
	return m
}

// publish makes m the current set (nil when empty) and returns it. mu is
// held, and m is not modified afterwards.
func (r *records[K]) publish(m map[K]record) *recordSet[K] {
	if len(m) == 0 {
		r.cur.Store(nil)
		return nil
	}
	s := &recordSet[K]{m: m}
	for _, e := range m {
		if s.first.IsZero() || e.until.Before(s.first) {
			s.first = e.until
		}
	}
	r.cur.Store(s)
	return s
}

// pending marks in changed a key that a call is writing to Redis.
const pending = math.MaxUint64

// begin marks k as being written by a call, until its set or abort.
func (r *records[K]) begin(k K) {
	if r.changed != nil {
		r.mu.Lock()
		r.changed[k] = pending
		r.mu.Unlock()
	}
}

// abort ends the write of k that begin marked, which failed.
func (r *records[K]) abort(k K) {
	if r.changed != nil {
		r.mu.Lock()
		r.gen++
		r.changed[k] = r.gen
		r.mu.Unlock()
	}
}

// set records k, or drops it when del, as a call or an event says.
func (r *records[K]) set(k K, e record, del bool, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.copyLive(now)
	if del || !now.Before(e.until) {
		delete(m, k)
	} else {
		m[k] = e
	}
	r.gen++
	if r.changed != nil {
		r.changed[k] = r.gen
	}
	r.publish(m)
}

// reading returns the gen that a re-read starting now begins at.
func (r *records[K]) reading() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gen
}

// replace makes the copy what a re-read begun at gen since found, but for
// the keys changed after since (see records), and returns the records it
// added: those the copy lacked, in force, that no change touched.
func (r *records[K]) replace(read map[K]record, since uint64, now time.Time) map[K]record {
	r.mu.Lock()
	defer r.mu.Unlock()
	var old map[K]record
	if s := r.cur.Load(); s != nil {
		old = s.m
	}
	m := make(map[K]record, len(read))
	var added map[K]record
	for k, e := range read {
		if !now.Before(e.until) || r.changed[k] > since {
			continue
		}
		m[k] = e
		if _, had := old[k]; !had {
			if added == nil {
				added = make(map[K]record)
			}
			added[k] = e
		}
	}
	for k, e := range old {
		if r.changed[k] > since && now.Before(e.until) {
			m[k] = e
		}
	}
	for k, g := range r.changed {
		if g <= since {
			delete(r.changed, k)
		}
	}
	r.publish(m)
	return added
}

// snapshot returns the records in force at now.
func (r *records[K]) snapshot(now time.Time) map[K]record {
	if s := r.live(now); s != nil {
		out := make(map[K]record, len(s.m))
		for k, e := range s.m {
			if now.Before(e.until) {
				out[k] = e
			}
		}
		return out
	}
	return nil
}

// write stores k's record in the hash, or deletes it when del.
func (r *records[K]) write(ctx context.Context, c rueidis.Client, k K, e record, del bool) error {
	cmd := c.B().Hset().Key(r.hash).FieldValue().FieldValue(r.field(k), e.value()).Build()
	if del {
		cmd = c.B().Hdel().Key(r.hash).Field(r.field(k)).Build()
	}
	if err := c.Do(ctx, cmd).Error(); err != nil {
		return fmt.Errorf("write %s: %w", r.hash, err)
	}
	return nil
}

// read is the command that reads the whole hash.
func (r *records[K]) read(c rueidis.Client) rueidis.Completed {
	return c.B().Hgetall().Key(r.hash).Build()
}

// decode reads the answer of read: the records in force at now, and the
// (field, value) pairs of those that ended or cannot be read, which the
// hash no longer needs.
func (r *records[K]) decode(res rueidis.RedisResult, now time.Time) (map[K]record, []string, error) {
	kv, err := res.AsStrMap()
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", r.hash, err)
	}
	m := make(map[K]record, len(kv))
	var ended []string
	for f, v := range kv {
		k, ok := r.parse(f)
		var rv recordValue
		if !ok || json.Unmarshal([]byte(v), &rv) != nil || rv.UntilMs <= now.UnixMilli() {
			ended = append(ended, f, v)
			continue
		}
		m[k] = record{until: time.UnixMilli(rv.UntilMs), reason: rv.Reason}
	}
	return m, ended, nil
}

// dropEnded deletes the (field, value) pairs of ended from the hash, each
// only if it still holds that value: a record written again meanwhile
// stays.
func (r *records[K]) dropEnded(ctx context.Context, c rueidis.Client, ended []string) error {
	if err := dropRecordsScript.exec1(ctx, c, []string{r.hash}, ended).Error(); err != nil {
		return fmt.Errorf("clean %s: %w", r.hash, err)
	}
	return nil
}

// dropRecordsScript deletes from the hash KEYS[1] each field of the
// (field, value) pairs in ARGV that still holds its value.
var dropRecordsScript = newScript(`
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i+1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 0
`)

// fieldEscaper keeps '|' out of the first part of a field, so that the
// first '|' ends it: a claim or header name may hold one.
var (
	fieldEscaper   = strings.NewReplacer("%", "%25", "|", "%7C")
	fieldUnescaper = strings.NewReplacer("%25", "%", "%7C", "|")
)

// joinField is the hash field of a record named by the pair (kind, id).
func joinField(kind, id string) string { return fieldEscaper.Replace(kind) + "|" + id }

// splitField undoes joinField.
func splitField(f string) (kind, id string, ok bool) {
	kind, id, ok = strings.Cut(f, "|")
	return fieldUnescaper.Replace(kind), id, ok
}
