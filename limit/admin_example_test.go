package limit_test

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/holo/wsgate/limit"
)

func ExampleLimiter_Inspect() {
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	l, err := limit.New(limit.Config{
		Rules: limit.Rules{UserMessages: limit.Rule{Limit: 5, Window: 10 * time.Second, Block: time.Minute}},
		Now:   func() time.Time { return start }, // a clock that stands still, for the output
	})
	if err != nil {
		panic(err)
	}
	defer l.Close()

	ctx := context.Background()
	for range 3 {
		l.Message(ctx, "alice", "10.0.0.7")
	}
	st, err := l.Inspect(ctx, limit.KeyRef{Scope: limit.ScopeUser, ID: "alice"}, nil)
	if err != nil {
		panic(err)
	}
	b, _ := json.Marshal(st)
	fmt.Println(string(b))
	// Output:
	// {"scope":"user","id":"alice","store":"memory","rules":[{"rule":"user-messages","windows":[{"perMs":10000,"limit":5,"count":3,"leftMs":10000}],"blockLeftMs":0,"strikes":0}]}
}

func ExampleLimiter_Hold() {
	l, err := limit.New(limit.Config{}) // Config.RedisURL holds the key on every replica
	if err != nil {
		panic(err)
	}
	defer l.Close()

	ctx := context.Background()
	alice := limit.KeyRef{Scope: limit.ScopeUser, ID: "alice"}
	if err := l.Hold(ctx, alice, time.Minute, "spam"); err != nil {
		panic(err)
	}
	d := l.Message(ctx, "alice", "10.0.0.7")
	fmt.Println(d.Allowed, d.Blocked, d.Rule, d.Scope, d.RetryAfter.Round(time.Second))
	if err := l.Reset(ctx, alice, nil); err != nil { // lifts the hold
		panic(err)
	}
	fmt.Println(l.Message(ctx, "alice", "10.0.0.7").Allowed)
	// Output:
	// false true admin-hold user 1m0s
	// true
}

func ExampleLimiter_Revoke() {
	l, err := limit.New(limit.Config{})
	if err != nil {
		panic(err)
	}
	defer l.Close()

	// Every replica's handler hears of a revocation: the gate closes the
	// token's connections there.
	events := make(chan limit.Event, 1)
	l.OnEvent(func(e limit.Event) { events <- e })

	ctx := context.Background()
	err = l.Revoke(ctx, limit.Revocation{TokenID: "jti-42", Until: time.Now().Add(time.Hour), Reason: "leaked"})
	if err != nil {
		panic(err)
	}
	e := <-events
	fmt.Println(e.Type, e.TokenID, e.Reason)
	r, revoked := l.Revoked("alice", "jti-42") // at a handshake: no I/O
	fmt.Println(revoked, r.TokenID)
	// Output:
	// revoke jti-42 leaked
	// true jti-42
}
