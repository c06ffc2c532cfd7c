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
	// false user connection memory
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
