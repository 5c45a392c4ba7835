# bench/chart.gp: ratios.png from the data bench/report.awk writes.
# gnuplot -e "dat='chart.dat'; xt='chart-xtics.gp'; out='ratios.png'; subtitle='...'" chart.gp
# chart.dat columns: x, accelerated/baseline, topology index, unix-reference/baseline ("?" = none)
set terminal pngcairo noenhanced size 1100,640 font "sans,10"
set output out
set datafile separator "\t"
set datafile missing "?"
set title "sockaccel: throughput accelerated / baseline (medians)\n".subtitle
set ylabel "ratio (1.0 = no change)"
set yrange [0:*]
set grid ytics
set key outside bottom center horizontal maxrows 1
set style fill solid 0.85 border -1
set boxwidth 0.85
load xt
set arrow 1 from graph 0, first 1 to graph 1, first 1 nohead dashtype 2 linecolor rgb "gray40"
topo(k) = word("bridge+netfilter veth loopback", k + 1)
color(k) = word("#1f77b4 #2ca02c #ff7f0e", k + 1)
plot for [k=0:2] dat using 1:($3 == k ? $2 : 1/0) with boxes linecolor rgb color(k) title topo(k), \
     dat using 1:2:(sprintf("%.2f", $2)) with labels offset 0,0.8 font ",9" notitle, \
     dat using 1:4 with points pointtype 9 pointsize 1.8 linecolor rgb "black" title "unix socket pair / baseline (reference)"
