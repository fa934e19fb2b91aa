/* FOR_EACH_ELEMENT(M) expands M(0) M(1) ... M(NETAGG_ELEMENTS - 1): P4 has no loops, and the
 * accumulator code is the same for every element of a packet. NETAGG_ELEMENTS is a multiple of 8. */
#ifndef NETAGG_ELEMENTS_P4
#define NETAGG_ELEMENTS_P4

#include "config.p4"

#if NETAGG_ELEMENTS % 8 != 0 || NETAGG_ELEMENTS < 8 || NETAGG_ELEMENTS > 64
#error "NETAGG_ELEMENTS must be a multiple of 8 from 8 to 64"
#endif

#if NETAGG_ELEMENTS > 0
#define ELEMENTS_0(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)
#else
#define ELEMENTS_0(M)
#endif
#if NETAGG_ELEMENTS > 8
#define ELEMENTS_1(M) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
#else
#define ELEMENTS_1(M)
#endif
#if NETAGG_ELEMENTS > 16
#define ELEMENTS_2(M) M(16) M(17) M(18) M(19) M(20) M(21) M(22) M(23)
#else
#define ELEMENTS_2(M)
#endif
#if NETAGG_ELEMENTS > 24
#define ELEMENTS_3(M) M(24) M(25) M(26) M(27) M(28) M(29) M(30) M(31)
#else
#define ELEMENTS_3(M)
#endif
#if NETAGG_ELEMENTS > 32
#define ELEMENTS_4(M) M(32) M(33) M(34) M(35) M(36) M(37) M(38) M(39)
#else
#define ELEMENTS_4(M)
#endif
#if NETAGG_ELEMENTS > 40
#define ELEMENTS_5(M) M(40) M(41) M(42) M(43) M(44) M(45) M(46) M(47)
#else
#define ELEMENTS_5(M)
#endif
#if NETAGG_ELEMENTS > 48
#define ELEMENTS_6(M) M(48) M(49) M(50) M(51) M(52) M(53) M(54) M(55)
#else
#define ELEMENTS_6(M)
#endif
#if NETAGG_ELEMENTS > 56
#define ELEMENTS_7(M) M(56) M(57) M(58) M(59) M(60) M(61) M(62) M(63)
#else
#define ELEMENTS_7(M)
#endif
#define FOR_EACH_ELEMENT(M) ELEMENTS_0(M) ELEMENTS_1(M) ELEMENTS_2(M) ELEMENTS_3(M) ELEMENTS_4(M) ELEMENTS_5(M) ELEMENTS_6(M) ELEMENTS_7(M)

/* Lane masks of a wide payload: the low 31 bits and the top bit of every 32-bit lane. */
#define LANE_LOW_PART(k) | ((bit<NETAGG_PAYLOAD_BITS>)0x7FFFFFFF << (32 * (k)))
#define LANE_HIGH_PART(k) | ((bit<NETAGG_PAYLOAD_BITS>)0x80000000 << (32 * (k)))
const bit<NETAGG_PAYLOAD_BITS> LANES_LOW = 0 FOR_EACH_ELEMENT(LANE_LOW_PART);
const bit<NETAGG_PAYLOAD_BITS> LANES_HIGH = 0 FOR_EACH_ELEMENT(LANE_HIGH_PART);
/* Lane-wise int32 addition (mod 2^32 in every lane, no carry between lanes): add the low 31 bits of
 * each lane (their carry lands in the lane's top bit, never beyond), then set each top bit to that
 * carry xor the two top bits. */
#define SWAR_ADD(a, b) ((((a) & LANES_LOW) + ((b) & LANES_LOW)) ^ (((a) ^ (b)) & LANES_HIGH))
/* Lane-wise signed int32 comparison: all ones in the lanes where a < b, zeros elsewhere. With the top
 * bits flipped (x = a ^ H, y = b ^ H) signed order is unsigned order. The lane-wise difference x - y
 * subtracts each lane's low 31 bits with the top bit of x forced and that of y cleared (so no borrow
 * crosses a lane), then fixes the top bit; a lane's borrow out of its top bit (x < y) is
 * (~x & y) | (~(x ^ y) & diff) there, and a top bit t spread over its lane is (t << 1) - (t >> 31). */
#define SWAR_LESS(MASK, a, b)                                                                  \
    {                                                                                          \
        bit<NETAGG_PAYLOAD_BITS> sw_x = (a) ^ LANES_HIGH;                                      \
        bit<NETAGG_PAYLOAD_BITS> sw_y = (b) ^ LANES_HIGH;                                      \
        bit<NETAGG_PAYLOAD_BITS> sw_d = ((sw_x | LANES_HIGH) - (sw_y & LANES_LOW))             \
            ^ ((sw_x ^ ~sw_y) & LANES_HIGH);                                                   \
        bit<NETAGG_PAYLOAD_BITS> sw_t = ((~sw_x & sw_y) | (~(sw_x ^ sw_y) & sw_d)) & LANES_HIGH; \
        MASK = (sw_t << 1) - (sw_t >> 31);                                                     \
    }

/* FOR_EACH_WORKER(M) expands M(0) ... M(31): the JOIN barrier looks at every member. */
#define FOR_EACH_WORKER(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15) M(16) M(17) M(18) M(19) M(20) M(21) M(22) M(23) M(24) M(25) M(26) M(27) M(28) M(29) M(30) M(31)

#endif
