/**
 * The dropout generator, shared by every backend so that a seed gives the same mask everywhere.
 *
 * mulberry32 (Tommy Ettinger) advances a 32-bit state by a constant and hashes it, so its n-th output is a
 * pure function of `seed + n·0x6D2B79F5`. Element i of a dropout mask uses output number i + 1: a
 * sequential generator and a multi-threaded kernel that hashes each index directly produce identical masks.
 */

export { mulberry32At } from '../util/random.js';
