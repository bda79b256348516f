// trtop-http: the native HTTP front-end of a multi-process `trtop serve`.
//
// The engine process (supervisor.py) starts it as it starts a Python front-end, with the same
// setup in TRTOP_FRONTEND_SETUP: the listening socket, this process's shared arena and its
// channel as inherited descriptors, and the server's settings. It answers the hot path itself
// (POST .../infer with binary tensors, the health probes) on every core Go schedules it on,
// and forwards every other request, unchanged, to the pod's Python front-end over a unix
// socket (metadata, statistics, metrics, JSON tensors, and every request it would refuse), so
// the API has one implementation and this process only makes the common request cheap.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"
)

type setup struct {
	Settings struct {
		ModelName        string  `json:"model_name"`
		TimeoutS         float64 `json:"timeout_s"`
		MaxBodyMB        float64 `json:"max_body_mb"`
		BodyTimeoutS     float64 `json:"body_timeout_s"`
		MaxConnections   int     `json:"max_connections"`
		DrainDelayS      float64 `json:"drain_delay_s"`
		ShutdownTimeoutS float64 `json:"shutdown_timeout_s"`
		LogLevel         string  `json:"log_level"`
		// gRPC connections older than this are asked to reconnect (0: never)
		GRPCMaxConnectionAgeS float64 `json:"grpc_max_connection_age_s"`
	} `json:"settings"`
	Index     int    `json:"index"`
	ListenFD  int    `json:"listen_fd"` // -1: no HTTP (a gRPC-only front-end)
	ChannelFD int    `json:"channel_fd"`
	ArenaFD   int    `json:"arena_fd"`
	ArenaSize int    `json:"arena_size"`
	ParentPID int    `json:"parent_pid"`
	ProxyPath string `json:"proxy_path"`
	// gRPC: its listening socket (0: this process serves no gRPC) and the Python gRPC server it forwards to.
	GRPCListenFD  int    `json:"grpc_listen_fd"`
	GRPCProxyPath string `json:"grpc_proxy_path"`
	// Descriptors this process keeps in flight at the engine (more requests wait and leave as one group).
	GroupLimit int `json:"group_limit"`
	// The bound while the first request waiting is small (0: GroupLimit; what is small comes with the engine's
	// state): small requests of a short model cost the engine's Python per descriptor, so they gain from fewer
	// (supervisor.small_group_limit).
	SmallGroupLimit int `json:"small_group_limit"`
	// How long past a descriptor's timeout an answer is waited for, and how often a lost one may ask for a
	// dump of every process's state (frontend.ANSWER_GRACE_S, LOST_DUMP_EVERY_S; 0: this program's defaults).
	AnswerGraceS   float64 `json:"answer_grace_s"`
	LostDumpEveryS float64 `json:"lost_dump_every_s"`
	// Go threads while this process's gRPC calls overlap (goThreads; 0, or not above GOMAXPROCS: the threads it
	// started with, always).
	BusyGoThreads int `json:"busy_go_threads"`
}

const envSetup = "TRTOP_FRONTEND_SETUP" // as frontend.ENV_FRONTEND

func main() {
	os.Exit(run())
}

func run() int {
	var cfg setup
	if err := json.Unmarshal([]byte(os.Getenv(envSetup)), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "trtop-http: %s is not valid JSON (%v): the engine process starts this program\n", envSetup, err)
		return 2
	}
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix(fmt.Sprintf("frontend-%d trtop-http: ", cfg.Index))
	// SIGTERM when the engine process dies (no orphaned front-ends), then check it did not die first.
	syscall.RawSyscall(syscall.SYS_PRCTL, 1 /* PR_SET_PDEATHSIG */, uintptr(syscall.SIGTERM), 0)
	if os.Getppid() != cfg.ParentPID {
		return 1
	}
	a, err := openArena(cfg.ArenaFD, cfg.ArenaSize)
	if err != nil {
		log.Print(err)
		return 1
	}
	conn, err := net.FileConn(os.NewFile(uintptr(cfg.ChannelFD), "channel"))
	if err != nil {
		log.Printf("the channel to the engine process: %v", err)
		return 1
	}
	var listener net.Listener // nil: a front-end for gRPC alone (ListenFD < 0)
	if cfg.ListenFD >= 0 {
		if listener, err = net.FileListener(os.NewFile(uintptr(cfg.ListenFD), "listen")); err != nil {
			log.Printf("the listening socket: %v", err)
			return 1
		}
	} else if cfg.GRPCListenFD <= 0 {
		log.Print("neither an HTTP nor a gRPC listening socket: the engine process starts this program")
		return 2
	}
	openTrace()
	defer closeTrace()
	if path := os.Getenv("TRTOP_HTTP_CPUPROFILE"); path != "" { // a development aid: go tool pprof
		if f, err := os.Create(path); err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	s := newServer(&cfg, a, newChannel(conn))
	if idle := runtime.GOMAXPROCS(0); cfg.GRPCListenFD > 0 && cfg.BusyGoThreads > idle {
		s.threads = newGoThreads(idle, cfg.BusyGoThreads, goThreadsQuiet, runtime.GOMAXPROCS)
		stop := make(chan struct{})
		defer close(stop)
		go s.threads.run(stop)
	}
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: seconds(cfg.Settings.BodyTimeoutS),
		IdleTimeout:       30 * time.Second, // as uvicorn's timeout_keep_alive in server.uvicorn_config
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.Default(),
		ConnContext:       connContext,
	}
	engineGone := make(chan error, 1)
	go func() { engineGone <- s.readChannel() }()
	s.ch.send([]byte(`["requests",0,[]]`)) // nothing to count: it tells the engine this process is up (its pings start)
	go s.reportLoop()
	go s.dumpOnSignal()
	if cfg.AnswerGraceS > 0 {
		answerGrace = seconds(cfg.AnswerGraceS)
	}
	dumpEvery := time.Minute
	if cfg.LostDumpEveryS > 0 {
		dumpEvery = seconds(cfg.LostDumpEveryS)
	}
	s.onLost = dumpsAtMostEvery(dumpEvery, func() {
		syscall.Kill(os.Getppid(), syscall.SIGUSR1) // the engine logs its state and asks every native front-end for theirs
	})
	served := make(chan error, 2)
	var servers []*http.Server
	if listener != nil {
		go func() { served <- srv.Serve(limitListener(listener, cfg.Settings.MaxConnections)) }()
		servers = append(servers, srv)
	}
	if cfg.GRPCListenFD > 0 {
		gl, err := net.FileListener(os.NewFile(uintptr(cfg.GRPCListenFD), "grpc-listen"))
		if err != nil {
			log.Printf("the gRPC listening socket: %v", err)
			return 1
		}
		gsrv := grpcServer(newGRPCFront(s, cfg.GRPCProxyPath))
		servers = append(servers, gsrv)
		// Connections are not limited (grpc's are not): calls in flight are (grpcFront.maxCalls).
		go func() { served <- gsrv.Serve(limitListener(gl, 0)) }()
	}

	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	code := 0
	select {
	case <-signals:
		// Drain: not ready, keep serving for the drain delay (endpoints drop this pod meanwhile),
		// then stop accepting and answer what is in flight.
		s.draining.Store(true)
		select {
		case <-time.After(seconds(cfg.Settings.DrainDelayS)):
		case <-engineGone:
		}
		shutdown(servers, seconds(cfg.Settings.ShutdownTimeoutS))
	case err := <-engineGone:
		if !s.draining.Load() {
			log.Printf("the engine process has gone (%v): exiting", err)
			code = 1
		}
		s.failAll()
		for _, x := range servers {
			x.Close()
		}
	case err := <-served:
		if !errors.Is(err, http.ErrServerClosed) {
			log.Printf("serving stopped: %v", err)
			code = 1
		}
	}
	s.report()
	s.ch.close()
	<-s.ch.done
	return code
}

// shutdown stops every server at once: no new connections (HTTP/2 clients get GOAWAY), what is in
// flight answered within the timeout, then closed.
func shutdown(servers []*http.Server, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	done := make(chan struct{}, len(servers))
	for _, x := range servers {
		go func() {
			if err := x.Shutdown(ctx); err != nil {
				log.Printf("requests still in flight after %.0fs: closing them", timeout.Seconds())
				x.Close()
			}
			done <- struct{}{}
		}()
	}
	for range servers {
		<-done
	}
}

// grpcServer: cleartext HTTP/2 (prior knowledge, as grpc clients connect) for the gRPC front-end.
func grpcServer(g *grpcFront) *http.Server {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:     g,
		Protocols:   &p,
		ErrorLog:    log.Default(),
		ConnContext: connContext,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: 1024,
			// Room for several large messages per connection: one client connection carries many calls
			// (grpc multiplexes), and the handler reads each into the arena as it arrives.
			MaxReceiveBufferPerConnection: 32 << 20,
			MaxReceiveBufferPerStream:     8 << 20,
		},
	}
}

// limitListener accepts at most n connections at a time (uvicorn's limit_concurrency does the
// same for the Python front-ends; n <= 0: no limit): further clients wait in the kernel's backlog.
func limitListener(l net.Listener, n int) net.Listener {
	lim := &limited{Listener: l}
	if n > 0 {
		lim.slots = make(chan struct{}, n)
	}
	return lim
}

type limited struct {
	net.Listener
	slots chan struct{} // nil: no limit
}

func (l *limited) Accept() (net.Conn, error) {
	if l.slots != nil {
		l.slots <- struct{}{}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		if l.slots != nil {
			<-l.slots
		}
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	return newLimitedConn(c, func() {
		if l.slots != nil {
			<-l.slots
		}
	}), nil
}

// seconds: a setting in seconds as a duration.
func seconds(s float64) time.Duration {
	return time.Duration(s * float64(time.Second))
}
