// The sandbox's pause image: the process that holds a pod's namespaces. It waits for
// SIGTERM or SIGINT and exits; a static binary in an otherwise empty image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
