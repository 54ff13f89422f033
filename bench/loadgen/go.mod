module oshu.dev/bench/loadgen

go 1.22
