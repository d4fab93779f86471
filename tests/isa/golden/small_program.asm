; Energon ISA v3 program for config edge: 28 instructions, 5 regions
.config edge 71f9eaf6f4e31329a5ec82a7d0a93812
.region params offset=0x00000000 dtype=float64 shape=1,2 layout=HS
.region q offset=0x00000100 dtype=int16 shape=1,1,64,64 layout=BHSD
.region k_planes offset=0x00004000 dtype=uint8 shape=1,1,16,128,8 layout=BHPSd
.region kv offset=0x00008000 dtype=int16 shape=2,1,1,128,64 layout=TBHSD
.region out offset=0x00010000 dtype=float32 shape=1,1,64,64 layout=BHSD
.meta {"mpmrf":{"rounds":[[4,2,-0.25],[4,4,0.0]]},"workload":{"batch":1,"head_dim":64,"heads":1,"seq_k":128,"seq_q":64}}

    setr      reg=HEAD_DIM value=64 @header                      ;    0 ctrl
    setr      reg=SEQ_Q value=64 @header                         ;    1 ctrl
    setr      reg=SEQ_K value=128 @header                        ;    2 ctrl
    setr      reg=V_OFFSET value=16384 @header                   ;    3 ctrl
    ld.param  dram=0x00000000 heads=1 buf=0x000 @"b0 h0"         ;    4 load
    ld.q      dram=0x00000100 rows=64 buf=0x0000 @"b0 h0 q0:64"  ;    5 load
    ld.kp     dram=0x00004000 keys=128 plane_lo=0 plane_hi=4 buf=0x0000 @"b0 h0 k0:128" ;    6 load
    signal    unit=LOAD token=0 @""                              ;    7 load
    wait      unit=FILTER token=0 @""                            ;    8 filter
    f.cand    rows=64 q0=0 k0=0 keys=128 idx=0x0000 bias=0x0000 head=0 causal=0 biasmode=NONE @"b0 h0 q0:64 k0:128" ;    9 filter
    f.score   qb=4 kb=2 rows=64 q=0x0000 kp=0x0000 keys=128 sc=0x0000 idx=0x0000 bias=0x0000 head=0 first=1 biasmode=NONE store=1 narrow=0 @"b0 h0 q0:64 k0:128 round 1" ;   10 filter
    f.select  round=1 alpha=-256 rows=64 q0=0 k0=0 keys=128 sc=0x0000 idx=0x0000 head=0 narrow=0 rule=MPMRF gap=0 keep=0 @"b0 h0 q0:64 k0:128 round 1" ;   11 filter
    f.score   qb=4 kb=4 rows=64 q=0x0000 kp=0x0000 keys=128 sc=0x0000 idx=0x0000 bias=0x0000 head=0 first=1 biasmode=NONE store=1 narrow=0 @"b0 h0 q0:64 k0:128 round 2" ;   12 filter
    f.select  round=2 alpha=0 rows=64 q0=0 k0=0 keys=128 sc=0x0000 idx=0x0000 head=0 narrow=0 rule=MPMRF gap=0 keep=0 @"b0 h0 q0:64 k0:128 round 2" ;   13 filter
    signal    unit=FILTER token=1 @""                            ;   14 filter
    signal    unit=FILTER token=2 @""                            ;   15 filter
    wait      unit=LOAD token=1 @""                              ;   16 load
    ld.kv     dram=0x00008000 keys=128 rows=64 idx=0x0000 buf=0x0000 @"b0 h0 q0:64 k0:128 kept" ;   17 load
    signal    unit=LOAD token=3 @""                              ;   18 load
    wait      unit=ATTEND token=2 @""                            ;   19 attend
    wait      unit=ATTEND token=3 @""                            ;   20 attend
    a.init    rows=64 @"b0 h0 q0:64"                             ;   21 attend
    a.attn    rows=64 q=0x0000 keys=128 kv=0x0000 idx=0x0000 bias=0x0000 head=0 biasmode=NONE @"b0 h0 q0:64 k0:128" ;   22 attend
    a.norm    rows=64 out=0x0000 head=0 @"b0 h0 q0:64"           ;   23 attend
    signal    unit=ATTEND token=4 @""                            ;   24 attend
    wait      unit=STORE token=4 @""                             ;   25 store
    st.out    dram=0x00010000 rows=64 buf=0x0000 @"b0 h0 q0:64"  ;   26 store
    halt @end                                                    ;   27 ctrl
