#define _GNU_SOURCE
#include <sys/mman.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  int mode=atoi(argv[1]); int full=atoi(argv[2]); size_t P=2<<20; int N=256;
  int fd=memfd_create("x",0); ftruncate(fd,P*N); fallocate(fd,0,0,P*N);
  char* base=mmap(0,P*N*2,PROT_NONE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE,-1,0);
  char* f=mmap(0,P*N,PROT_READ|PROT_WRITE,MAP_SHARED,fd,0); memset(f,1,P*N); munmap(f,P*N);
  double tq=0,tm=0,tp=0,tt=0,tu=0; volatile long s=0;
  for(int rep=0;rep<8;rep++){
  for(int i=0;i<N;i++){
    char* va=base+((i*7+rep)%(2*N))*P; double a=now();
    mmap(va,P,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_FIXED,fd,(off_t)i*P); double b=now();
    if(mode==1) madvise(va,P,23);
    if(mode==2) madvise(va,P,22);
    double c=now();
    va[4096*3]=1; va[P/2+8]=2;
    if(full) for(size_t o=0;o<P;o+=4096) s+=va[o]; if(full>1) { double q=now(); for(size_t o=0;o<P;o+=4096) s+=va[o]; tq+=now()-q; }
    double d=now();
    mmap(va,P,PROT_NONE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED|MAP_NORESERVE,-1,0);
    double e=now(); tm+=b-a; tp+=c-b; tt+=d-c; tu+=e-d;
  }}
  double k=1e6/(8*N);
  printf("mode %d full %d: map %.1f populate %.1f touch %.1f unmap %.1f second %.1f us\n",mode,full,tm*k,tp*k,tt*k,tu*k,tq*k);
}
