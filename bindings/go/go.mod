module github.com/libturboquant/turboquant/bindings/go

go 1.19
