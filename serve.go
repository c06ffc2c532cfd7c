package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"

	"github.com/holo/wsgate/admin"
	"github.com/holo/wsgate/auth"
	"github.com/holo/wsgate/auth/clientip"
	"github.com/holo/wsgate/internal/demo"
	"github.com/holo/wsgate/internal/redact"
	"github.com/holo/wsgate/limit"
	"github.com/holo/wsgate/metrics"
	"github.com/holo/wsgate/policy"
	"github.com/holo/wsgate/proxy"
)

func newLogger(cfg *config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.logLevel}
	if cfg.logJSON {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// singlePeerSample is how many connections in a row from one private
// address, with no trusted proxy, make the gate warn that the peer is
// probably a proxy.
const singlePeerSample = 50

// serve runs the gate until SIGTERM or SIGINT, then drains: /readyz turns
// 503 at once, clients are served for the shutdown delay while endpoints
// update, then the connections are drained (close 1012 by default), spread
// over the drain spread, and the process exits 0 within the grace period
// after it. started, when not nil, receives the client
// listener's address.
func serve(ctx context.Context, cfg *config, started func(addr string)) error {
	log := newLogger(cfg)
	// SIGHUP, whose default action ends the process, re-reads the key
	// files; registered first so that no moment of the start is exposed.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reg := prometheus.NewRegistry()
	metrics.RegisterRuntime(reg)
	m := metrics.New(reg, version, commit)

	var ready atomic.Bool
	ready.Store(true)
	cfg.limits.Logger = log
	lim, err := limit.New(cfg.limits)
	if err != nil {
		return cli.Exit("wsgate: "+namedFlag(err).Error(), exitBadConfig)
	}
	defer lim.Close()
	if cfg.limits.RedisURL != "" {
		m.WatchRedis(lim.RedisUp)
	}
	cfg.auth.Logger = log
	verifier, err := auth.NewVerifier(ctx, cfg.auth)
	if err != nil {
		return cli.Exit("wsgate: "+namedFlag(err).Error(), exitBadConfig)
	}
	defer verifier.Close()
	if !verifier.Enabled() {
		log.Warn("authentication is off: no --jwt-hmac-secret-file, --jwt-key-file or --jwks-url, so every client is anonymous and limited by IP alone (--require-auth refuses to start like this)")
	}
	warnUnsafe(log, cfg)
	for _, reason := range auth.Reasons() {
		m.AuthFailures.WithLabelValues(reason)
	}

	cfg.proxy.Limiter = lim
	cfg.proxy.Auth = verifier
	cfg.proxy.ClientIP = cfg.ip
	cfg.proxy.Metrics = m
	cfg.proxy.Rules = cfg.rules
	cfg.proxy.Logger = log
	cfg.proxy.Revoked = func(subject, tokenID string) bool {
		_, revoked := lim.Revoked(subject, tokenID)
		return revoked
	}
	px, err := proxy.New(cfg.proxy)
	if err != nil {
		return cli.Exit("wsgate: --upstream: "+err.Error(), exitBadConfig)
	}
	// Every replica closes the connections that an operator's disconnect
	// or revocation names, whether or not its own admin API is on.
	replica := replicaName()
	lim.OnEvent(admin.EventHandler(px, log))
	adminHandler := metrics.AdminHandler(reg, readiness(&ready, cfg.limits, cfg.redisRequired, lim))
	var api *admin.API
	if cfg.adminTokenFile != "" {
		api, err = admin.New(admin.Config{TokenFile: cfg.adminTokenFile, Limiter: lim, Proxy: px, Rules: cfg.rules,
			Issuer: cfg.auth.Issuer, IPKey: cfg.ip.Key, Replica: replica, Logger: log})
		if err != nil {
			return cli.Exit("wsgate: --admin-token-file: "+err.Error(), exitBadConfig)
		}
		adminHandler = api.Handler(adminHandler)
		watchCtx, stopWatch := context.WithCancel(ctx)
		defer stopWatch()
		go api.Watch(watchCtx, 0)
	}

	var lc net.ListenConfig
	if cfg.proxy.PingInterval > 0 {
		// The gate's pings find a dead client within two intervals; TCP keepalive would
		// only add four setsockopt calls to every accepted connection.
		lc.KeepAlive = -1
	}
	ln, err := lc.Listen(context.Background(), "tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	if cfg.proxyProtocol {
		ln = clientip.NewProxyListener(ln, cfg.ip.Trusted, cfg.proxy.HandshakeTimeout)
	}
	var accepted func(net.Addr)
	if len(cfg.ip.Trusted) == 0 {
		accepted = clientip.NewPeerWatch(singlePeerSample, func(peer netip.Addr) {
			log.Warn("every connection so far came from one private address and --trusted-proxies is empty: "+
				"if it is a proxy (an ingress, a load balancer), every per-IP rule applies to all of its clients at once; "+
				"name it in --trusted-proxies", "peer", peer.String(), "connections", singlePeerSample)
		}).Observe
	}
	adminLn, err := net.Listen("tcp", cfg.adminListen)
	if err != nil {
		ln.Close()
		return fmt.Errorf("--admin-listen: %w", err)
	}
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	srv := &http.Server{
		Handler:           px,
		ReadHeaderTimeout: cfg.proxy.HandshakeTimeout,
		MaxHeaderBytes:    cfg.proxy.MaxHeaderBytes,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          errLog,
	}
	// The admin port answers small calls: a peer that sends a body
	// slowly, or holds a connection idle, does not keep a goroutine and a
	// descriptor of the process's for ever.
	adminSrv := &http.Server{
		Handler:           adminHandler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          errLog,
	}
	serveErr := make(chan error, 2)
	go func() { serveErr <- px.Serve(ln, srv, accepted) }()
	go func() { serveErr <- adminSrv.Serve(adminLn) }()
	if len(cfg.serviceLinks) > 0 {
		log.Debug("ignoring the Kubernetes service-link variables that share the WSGATE_ prefix", "variables", cfg.serviceLinks)
	}
	reloadRules := make(chan struct{}, 1)
	if cfg.rules != nil {
		pol := cfg.rules.Load()
		m.SetRules(pol.Source, pol.Hash, ruleSeries(pol))
		go cfg.rules.Watch(ctx, rulesPollEvery, reloadRules, func(pol *policy.Policy, err error) {
			if err != nil {
				m.RulesReloads.WithLabelValues("error").Inc()
				log.Error("the rules file cannot be taken; the rules in force stay", "err", err.Error())
				return
			}
			m.RulesReloads.WithLabelValues("ok").Inc()
			m.SetRules(pol.Source, pol.Hash, ruleSeries(pol))
			closed := px.RulesChanged(pol)
			log.Info("rules reloaded", "file", pol.Source, "sha256", pol.Hash, "rules", len(pol.Rules), "denied_connections_closed", closed)
		})
		log.Info("rules file in force", "file", cfg.rules.File(), "sha256", pol.Hash, "rules", len(pol.Rules),
			"classes", len(pol.Classes), "tiers", len(pol.Tiers))
	} else {
		m.SetRules("flags", "", metrics.FlagRules)
	}
	r := cfg.limits.Rules
	log.Info("wsgate started", "version", version, "listen", ln.Addr().String(), "admin", adminLn.Addr().String(),
		"upstream", redact.URL(cfg.proxy.Upstream.String()), "store", lim.StoreName(), "mode", cfg.limits.Mode.String(),
		"failure_mode", cfg.limits.FailureMode.String(), "auth", verifier.Enabled(), "admin_api", api != nil, "replica", replica,
		"user_rate", r.UserMessages.String(), "ip_rate", r.IPMessages.String(),
		"user_conn_rate", r.UserConns.String(), "ip_conn_rate", r.IPConns.String(), "ip_max_conns", cfg.limits.IPMaxConns)
	if started != nil {
		started(ln.Addr().String())
	}

	sigCtx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
wait:
	for {
		select {
		case <-sigCtx.Done():
			break wait
		case <-hup:
			if err := verifier.Reload(); err != nil {
				log.Warn("SIGHUP: the key files cannot be read; keeping the keys in use", "err", err)
			} else {
				log.Info("SIGHUP: key files re-read (flags and other settings take a restart)")
			}
			if api != nil {
				if err := api.Reload(); err != nil {
					log.Warn("SIGHUP: the admin token file cannot be read; keeping the token in use", "err", err)
				}
			}
			if cfg.rules != nil {
				select {
				case reloadRules <- struct{}{}:
				default: // a reload is already on its way
				}
			}
		case err := <-serveErr:
			return fmt.Errorf("serve: %w", err)
		}
	}
	stop()
	ready.Store(false)
	log.Info("draining", "delay_ms", cfg.shutdownDelay.Milliseconds(), "spread_ms", cfg.proxy.DrainSpread.Milliseconds(),
		"grace_ms", cfg.shutdownGrace.Milliseconds(), "connections", px.Active())
	again := make(chan os.Signal, 1)
	signal.Notify(again, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(again)
	select {
	case <-time.After(cfg.shutdownDelay):
	case <-again:
		log.Info("second signal: skipping the shutdown delay")
	}

	// The drain spreads its closes over --drain-spread; the grace runs from
	// the last of them.
	graceCtx, cancel := context.WithTimeout(context.Background(), cfg.proxy.DrainSpread+cfg.shutdownGrace)
	defer cancel()
	httpDone := make(chan error, 1)
	go func() { httpDone <- srv.Shutdown(graceCtx) }()
	if err := px.Shutdown(graceCtx); err != nil {
		log.Warn("connections left at the end of the grace period were closed", "err", err)
	}
	if err := <-httpDone; err != nil {
		log.Warn("pass-through requests left at the end of the grace period were cut", "err", err)
		_ = srv.Close()
	}
	_ = adminSrv.Close()
	log.Info("stopped")
	return nil
}

// readiness is /readyz: false while draining, and under --failure-mode
// closed or --redis-required also while Redis is unreachable (under closed
// every event would be refused, so traffic is better sent to a replica that
// reaches Redis; --redis-required wants no replica to limit on its own).
func readiness(ready *atomic.Bool, lc limit.Config, redisRequired bool, lim *limit.Limiter) func() bool {
	if lc.RedisURL == "" || lc.FailureMode != limit.FailClosed && !redisRequired {
		return ready.Load
	}
	return func() bool { return ready.Load() && lim.RedisUp() }
}

// serveDemo runs the built-in demo backend on a loopback port and the gate
// in front of it, on the memory store unless --redis-url says otherwise.
func serveDemo(ctx context.Context, cfg *config) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo backend: %w", err)
	}
	log := newLogger(cfg)
	backend := &http.Server{Handler: demo.Handler(log), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = backend.Serve(ln) }()
	defer backend.Close()
	cfg.proxy.Upstream = &url.URL{Scheme: "http", Host: ln.Addr().String()}
	return serve(ctx, cfg, func(addr string) {
		host, port, _ := net.SplitHostPort(addr)
		if host == "" || host == "::" || host == "0.0.0.0" {
			host = "localhost"
		}
		page, metricsURL := "http://"+net.JoinHostPort(host, port)+"/", "http://"+cfg.adminListen+"/metrics"
		if cfg.logJSON {
			// stderr stays one JSON object per line for log shippers.
			log.Info("demo: open the page in a browser", "page", page, "metrics", metricsURL)
			return
		}
		fmt.Fprintf(os.Stderr, "\n  wsgate demo: open %s in a browser (metrics on %s)\n\n", page, metricsURL)
	})
}

// rulesPollEvery is how often the rules file is read for changes. A
// Kubernetes ConfigMap update reaches the pod's volume within the kubelet's
// sync period (about a minute); this adds at most two seconds.
const rulesPollEvery = 2 * time.Second

// ruleSeries are the rate_limited_total series of a policy's rules, for
// each of its tiers.
func ruleSeries(pol *policy.Policy) []metrics.RuleSeries {
	tiers := []string{""}
	for _, t := range pol.Tiers {
		if !t.Exempt {
			tiers = append(tiers, t.Name)
		}
	}
	var out []metrics.RuleSeries
	for _, r := range pol.Rules {
		kind := limit.KindMessage
		if r.Handshakes() {
			kind = limit.KindConnection
		}
		for _, t := range tiers {
			out = append(out, metrics.RuleSeries{Scope: r.Key.String(), Kind: kind, Rule: r.Name, Tier: t})
		}
	}
	return out
}

// replicaName names this process in the admin API's answers and logs:
// the host name (a pod's name) and the process id, unique among the gates
// that share a Redis.
func replicaName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "wsgate"
	}
	return fmt.Sprintf("%s/%d", host, os.Getpid())
}

// warnUnsafe names settings that work but leave a door open.
func warnUnsafe(log *slog.Logger, cfg *config) {
	if cfg.auth.Cookie != "" && len(cfg.proxy.AllowedOrigins) == 0 {
		log.Warn("--token-cookie without --allowed-origins: any site a signed-in user visits can open a WebSocket that carries the cookie (cross-site WebSocket hijacking); name the app's origins")
	}
	for _, p := range cfg.ip.Trusted {
		if p.Bits() == 0 {
			log.Warn("--trusted-proxies "+p.String()+" trusts every peer: any client can name its own IP in X-Forwarded-For", "prefix", p.String())
		}
	}
}
