#!/usr/bin/perl
# hookscope fidelity probe: writes, as text, the process state this hook
# script inherited (tests/slurm/fidelity.py compares it between bare slurmd
# and hookscope-hook, byte for byte).  Perl because it changes nothing at
# start-up: no signal handler, no mask, no locale, no extra fd (a shell or
# Python would alter what is measured).  The fidelity tier copies this file
# into each case and replaces __OUT__ with the output path prefix.
my $out = "__OUT__";
my $pid = $$;

# fds first, before this probe opens anything of its own
opendir(my $dh, "/proc/self/fd") or die "opendir: $!";
my @fds = sort { $a <=> $b } grep { /^\d+$/ } readdir($dh);
closedir($dh);
my $s = "";
for my $fd (@fds) {
    my $t = readlink("/proc/self/fd/$fd");
    next unless defined $t;    # the directory handle, closed since
    $t =~ s/^(pipe|socket|anon_inode):.*/$1/;
    my $flags = "?";
    if (open(my $fi, "<", "/proc/self/fdinfo/$fd")) {
        while (<$fi>) { $flags = $1 if /^flags:\s+(\d+)/ }
        close $fi;
    }
    $s .= "fd $fd -> $t flags=$flags\n";
}

sub slurp {
    my ($f) = @_;
    open(my $h, "<", $f) or return "<unreadable: $!>";
    local $/;
    my $d = <$h>;
    close $h;
    return defined $d ? $d : "";
}

for my $line (split /\n/, slurp("/proc/self/status")) {
    $s .= "$line\n" if $line =~ /^(Umask|SigBlk|SigIgn|SigCgt|Cap\w+|NoNewPrivs|Seccomp|Uid|Gid|Groups|Cpus_allowed_list|Mems_allowed_list):/;
}
$s .= "limits:\n" . slurp("/proc/self/limits");
$s .= "cwd: " . readlink("/proc/self/cwd") . "\n";
my $cmd = slurp("/proc/self/cmdline");
$cmd =~ s/\0/\\0/g;
$s .= "cmdline: $cmd\n";
my $st = slurp("/proc/self/stat");
$st =~ s/^.*\)\s+//s;
my @f = split / /, $st;
# fields after "(comm)": state ppid pgrp session tty_nr tpgid flags ... nice(16)
my ($pgrp, $sid) = ($f[2], $f[3]);
$s .= "pgrp: " . ($pgrp == $pid ? "self" : "other") . "\n";
$s .= "session: " . ($sid == $pid ? "self" : $sid == $pgrp ? "pgrp" : "other") . "\n";
my $leader = slurp("/proc/$sid/comm");
chomp $leader;
$s .= "session leader: $leader\n";
$s .= "tty_nr: $f[4] tpgid: $f[5] priority: $f[15] nice: $f[16] rt_priority: $f[37] policy: $f[38]\n";
for my $k ("oom_score_adj", "cgroup", "loginuid", "personality", "timerslack_ns") {
    my $v = slurp("/proc/self/$k");
    chomp $v;
    $s .= "$k: $v\n";
}
my $umask = sprintf("%04o", umask);
$s .= "umask(): $umask\n";

open(my $o, ">", "$out.state") or die "$out.state: $!";
print $o $s;
close $o;
open(my $e, ">", "$out.env") or die "$out.env: $!";
binmode $e;
print $e slurp("/proc/self/environ");
close $e;
exit 0;
