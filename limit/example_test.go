package limit_test

import (
	"context"
	"fmt"
	"time"

	"github.com/holo/wsgate/limit"
)

func Example() {
	rule, err := limit.ParseRule("2/10s")
	if err != nil {
		panic(err)
	}
	rule.Block = 5 * time.Second
	l, err := limit.New(limit.Config{Rules: limit.Rules{UserMessages: rule}})
	if err != nil {
		panic(err)
	}
	defer l.Close()

	ctx := context.Background()
	for range 3 {
		d := l.Message(ctx, "anon:10.0.0.7", "10.0.0.7")
		fmt.Println(d.Allowed, d.Scope, d.RetryAfter)
	}
	d := l.Handshake(ctx, "anon:10.0.0.7", "10.0.0.7")
	fmt.Println(d.Allowed, d.Scope, d.Kind, d.Store)
	// Output:
	// true  0s
	// true  0s
	// false user 5s
	// false user message memory
}

func ExampleParseRule() {
	r, err := limit.ParseRule("100/10s")
	fmt.Println(r.Limit, r.Window, err)
	_, err = limit.ParseRule("10/x")
	fmt.Println(err)
	// Output:
	// 100 10s <nil>
	// bad rule "10/x": window "x" is not a duration
}

func ExampleLimiter_OpenConn() {
	l, err := limit.New(limit.Config{IPMaxConns: 2})
	if err != nil {
		panic(err)
	}
	defer l.Close()

	ctx := context.Background()
	var releases []func()
	for range 3 {
		d, release := l.OpenConn(ctx, "10.0.0.7")
		fmt.Println(d.Allowed, d.Scope, d.Kind, d.RetryAfter)
		if d.Allowed {
			releases = append(releases, release)
		}
	}
	releases[0]() // the first connection ends
	d, _ := l.OpenConn(ctx, "10.0.0.7")
	fmt.Println(d.Allowed)
	// Output:
	// true  connection 0s
	// true  connection 0s
	// false ip connection 1s
	// true
}
