package main

import (
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

// Flag categories in --help.
const (
	catListen   = "Listeners"
	catUpstream = "Upstream"
	catLimits   = "Limits"
	catRedis    = "Redis"
	catProtocol = "Protocol"
	catShutdown = "Shutdown"
	catAuth     = "Authentication"
	catClientIP = "Client IP"
	catLog      = "Logging"
	catWeb      = "Web apps"
)

// env names a flag's environment variable: WSGATE_<UPPER_SNAKE>.
func env(name string) []string {
	return []string{"WSGATE_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
}

func flags(upstreamRequired bool) []cli.Flag {
	str := func(name, value, cat, usage string) *cli.StringFlag {
		return &cli.StringFlag{Name: name, Value: value, Category: cat, Usage: usage, EnvVars: env(name)}
	}
	dur := func(name string, value time.Duration, cat, usage string) *cli.DurationFlag {
		return &cli.DurationFlag{Name: name, Value: value, Category: cat, Usage: usage, EnvVars: env(name)}
	}
	strs := func(name, cat, usage string) *cli.StringSliceFlag {
		return &cli.StringSliceFlag{Name: name, Category: cat, Usage: usage, EnvVars: env(name)}
	}
	upstreamUsage := "backend base URL, http://host:port (required); WebSocket handshakes go to its ws:// form with the client's path and query"
	if !upstreamRequired {
		upstreamUsage = "ignored: the demo runs its own backend"
	}
	upstream := str("upstream", "", catUpstream, upstreamUsage)
	return []cli.Flag{
		str("listen", ":8080", catListen, "address for clients (WebSocket and pass-through HTTP)"),
		str("admin-listen", ":9090", catListen, "address for /metrics, /healthz, /readyz and the admin API"),
		str("admin-token-file", "", catListen, "file holding the admin API's bearer token (re-read on SIGHUP); the API (/v1/ on the admin port: inspect, reset and block keys, disconnect, drain, revoke) is off without it"),
		upstream,
		dur("upstream-dial-timeout", 5*time.Second, catUpstream, "bound on connecting to the upstream and its handshake (504 when over)"),
		dur("pass-body-timeout", 30*time.Second, catUpstream, "bound on receiving a pass-through (non-WebSocket) request's body; over it: 408; 0 = no bound"),
		dur("pass-response-timeout", 60*time.Second, catUpstream, "bound on the upstream's response headers to a pass-through request; keep it above the backend's longest long-poll hold (socket.io: its 25s ping interval); over it: 504; 0 = no bound"),
		str("max-message-bytes", "1MiB", catProtocol, "largest data message (sum of its frames) in either direction; over it: close 1009 (bytes, or with KiB/MiB/GiB)"),
		str("max-header-bytes", "16KiB", catProtocol, "largest request line + headers; over it: 431"),
		dur("handshake-timeout", 10*time.Second, catProtocol, "bound on reading a request's headers and completing a WebSocket handshake"),
		dur("idle-timeout", 0, catProtocol, "close a connection (1001) after this long without a frame either way; 0 = never"),
		dur("message-timeout", 60*time.Second, catProtocol, "a client message must arrive whole within this long of its first frame; over it: close 1008; 0 = no bound"),
		dur("write-timeout", 10*time.Second, catProtocol, "a client that reads nothing for this long while the gate writes to it is dropped (the upstream is not read meanwhile); 0 = no bound"),
		dur("ping-interval", 30*time.Second, catProtocol, "the gate's own pings to each client; a client silent for two intervals is closed (1001); 0 = none"),
		&cli.BoolFlag{Name: "compression", Category: catProtocol, EnvVars: env("compression"),
			Usage: "negotiate permessage-deflate (no context takeover) with clients; the upstream leg stays uncompressed"},
		str("control-frame-rate", "50/1s", catProtocol, "control frames (ping, pong, close) a client may send per connection: N/window; over it: close 1008; 0 = no bound"),
		&cli.IntFlag{Name: "max-conns", Category: catListen, EnvVars: env("max-conns"),
			Usage: "connections open at once; over it: HTTP 503 before the upgrade; 0 = unlimited"},
		&cli.IntFlag{Name: "max-pending-handshakes", Category: catListen, EnvVars: env("max-pending-handshakes"),
			Usage: "WebSocket handshakes in progress at once; over it a handshake waits 250ms, then gets 503 with a Retry-After of 1-5s; 0 = unlimited"},
		&cli.IntFlag{Name: "max-pass-requests", Value: 1024, Category: catListen, EnvVars: env("max-pass-requests"),
			Usage: "pass-through (non-WebSocket) requests in flight at once, long polls included; over it: HTTP 503; 0 = unlimited"},
		str("rules-file", "", catLimits, "a YAML policy (classes, tiers, deny and allow lists, named rules) instead of the four rule flags; re-read on SIGHUP and when it changes; check it with wsgate rules check"),
		str("user-rate", "100/10s", catLimits, "data messages per identity: N/window (fixed window from the first message); 0 = off"),
		dur("user-block", 5*time.Second, catLimits, "how long an identity over --user-rate stays blocked"),
		str("ip-rate", "300/10s", catLimits, "data messages per client IP: N/window; 0 = off"),
		dur("ip-block", 5*time.Second, catLimits, "how long an IP over --ip-rate stays blocked"),
		str("user-conn-rate", "30/1m", catLimits, "handshakes per identity: N/window; 0 = off"),
		str("ip-conn-rate", "60/1m", catLimits, "handshakes per client IP: N/window; 0 = off"),
		&cli.BoolFlag{Name: "shadow", Category: catLimits, EnvVars: env("shadow"),
			Usage: "evaluate limits and count would-be refusals (holo_ws_limiter_decisions_total{decision=\"shadow_limited\"}) but refuse nothing"},
		str("limit-mode", "exact", catLimits, "exact: every message consults Redis; lease: each replica takes slices of a key's budget from Redis and decides locally until a slice is spent"),
		&cli.IntFlag{Name: "lease-size", Category: catLimits, EnvVars: env("lease-size"),
			Usage: "units of a message rule's window budget one Redis call reserves in lease mode; 0 = a tenth of the window's N (a byte rule's slice is always a tenth of its budget)"},
		&cli.IntFlag{Name: "ip-max-conns", Category: catLimits, EnvVars: env("ip-max-conns"),
			Usage: "connections one client IP may hold open at once, across replicas (shared through Redis, entries expire so a crashed replica's connections age out); over it: 4008; 0 = off"},
		str("redis-url", "", catRedis, "redis:// or rediss:// URL (several addr= for a Cluster, master_set= for Sentinel); empty = in-process memory store"),
		str("key-prefix", "ws-rate", catRedis, "prefix of every Redis key"),
		str("failure-mode", "local", catRedis, "while Redis is unreachable: local (decide in process), open (allow), closed (refuse)"),
		dur("redis-timeout", 50*time.Millisecond, catRedis, "deadline of every Redis decision (message decisions share deadlines in 5ms steps); past it --failure-mode decides"),
		strs("jwt-hmac-secret-file", catAuth, "file holding the raw bytes of an HS256/384/512 secret (repeatable: a token verifies with any; files are re-read when they change and on SIGHUP)"),
		strs("jwt-key-file", catAuth, "file holding PEM public keys, a JWK or a JWK Set (repeatable; re-read when it changes and on SIGHUP)"),
		str("jwks-url", "", catAuth, "JWK Set URL, refreshed in the background; an unknown kid triggers at most one refresh per 10s"),
		strs("jwt-algorithms", catAuth, "allowed signature algorithms (default: those that fit the configured keys)"),
		str("jwt-issuer", "", catAuth, "required iss claim"),
		strs("jwt-audience", catAuth, "accepted aud values (repeatable); the token must carry one"),
		str("jwt-subject-claim", "sub", catAuth, "claim that identifies the user: a string, or an integer id"),
		dur("jwt-leeway", 30*time.Second, catAuth, "clock skew tolerated for exp, nbf and iat"),
		str("token-query-param", "access_token", catAuth, "query parameter that may carry the token (browsers cannot set headers on a WebSocket)"),
		str("token-cookie", "", catAuth, "cookie that may carry the token; empty = off"),
		&cli.BoolFlag{Name: "forward-token", Category: catAuth, EnvVars: env("forward-token"),
			Usage: "keep the token in what goes upstream (header, query parameter, subprotocol)"},
		&cli.BoolFlag{Name: "allow-anonymous", Category: catAuth, EnvVars: env("allow-anonymous"),
			Usage: "with keys configured, admit clients without a token, identified by IP"},
		&cli.BoolFlag{Name: "close-on-token-expiry", Category: catAuth, EnvVars: env("close-on-token-expiry"),
			Usage: "close a connection with 1008 \"token expired\" when its token's exp passes"},
		str("identity-header", "X-Auth-Subject", catAuth, "header carrying the verified subject upstream (inbound ones are removed); empty = none"),
		strs("strip-header", catAuth, "header removed from every request before it goes upstream (repeatable)"),
		strs("allowed-origins", catAuth, "Origin patterns allowed to connect, e.g. https://*.example.com (repeatable); empty = any"),
		strs("trusted-proxies", catClientIP, "CIDRs of proxies (e.g. the ingress) whose X-Forwarded-For and PROXY header are believed (repeatable)"),
		&cli.BoolFlag{Name: "proxy-protocol", Category: catClientIP, EnvVars: env("proxy-protocol"),
			Usage: "accept a PROXY protocol v1/v2 header from --trusted-proxies"},
		&cli.IntFlag{Name: "ipv6-prefix", Value: 64, Category: catClientIP, EnvVars: env("ipv6-prefix"),
			Usage: "group IPv6 clients by this prefix length for per-IP limits"},
		dur("shutdown-delay", 5*time.Second, catShutdown, "after SIGTERM, keep serving this long with /readyz at 503 while endpoints update"),
		dur("shutdown-grace", 25*time.Second, catShutdown, "after the delay and the drain spread, time for connections to finish closing before the process exits"),
		dur("drain-spread", 0, catShutdown, "after the delay, close connections spread evenly over this window instead of all at once, so that clients do not reconnect together; 0 = all at once"),
		&cli.IntFlag{Name: "drain-code", Value: 1012, Category: catShutdown, EnvVars: env("drain-code"),
			Usage: "close code of a drained connection, after a text frame {\"code\":N,\"error\":...,\"retryAfterMs\":N}: 1012 (service restart) or 1001 (going away)"},
		dur("max-conn-age", 0, catShutdown, "close a connection older than this (less a random tenth) the way a drain does, so that sockets rebalance onto new replicas; 0 = never"),
		str("log-level", "info", catLog, "debug, info, warn or error"),
		str("log-format", "json", catLog, "json or text"),

		// Guards against a configuration that starts but is not the one meant.
		&cli.BoolFlag{Name: "require-auth", Category: catAuth, EnvVars: env("require-auth"),
			Usage: "refuse to start without --jwt-hmac-secret-file, --jwt-key-file or --jwks-url (the chart sets it when keys are configured)"},
		&cli.BoolFlag{Name: "redis-required", Category: catRedis, EnvVars: env("redis-required"),
			Usage: "keep /readyz at 503 while Redis is not reachable, whatever --failure-mode says (needs --redis-url)"},

		// Web apps: socket.io, routes without a token, refusal logs.
		str("socketio-path", "/socket.io/", catWeb, "where socket.io lives: requests under it with EIO=4 get refusals as socket.io packets and are counted by engine.io packet on polling; empty = off"),
		str("socketio-event", "wsgate:limited", catWeb, "socket.io event that carries a refusal to the app"),
		strs("skip-auth-route", catWeb, "route admitted without a token, as METHOD=path-regex or path-regex (repeatable); still counted by the rules, keyed by client IP"),
		&cli.BoolFlag{Name: "skip-auth-preflight", Category: catWeb, EnvVars: env("skip-auth-preflight"),
			Usage: "admit CORS preflights (OPTIONS with Origin and Access-Control-Request-Method) without a token"},
		strs("health-passthrough", catWeb, "path whose GET and HEAD go to the backend without a token, an Origin check or any limit (repeatable)"),
		&cli.BoolFlag{Name: "log-subject", Category: catLog, EnvVars: env("log-subject"),
			Usage: "add the plain token subject to each refusal log line, next to the hashed identity key"},
	}
}
